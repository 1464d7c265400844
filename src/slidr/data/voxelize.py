"""Voxelization of a scan (cylindrical or cartesian) and the per-point input features.

Cylindrical voxels, as in SLidR: ``(floor(rho / size), floor(azimuth_deg / azimuth_step_deg), floor(z / size))``
with ``rho = sqrt(x^2 + y^2)`` and ``azimuth = atan2(y, x)`` in degrees (-180..180); cartesian voxels:
``floor((x, y, z) / size)``. One point is kept per voxel: the first one in point order (deterministic; the
authors' ``sparse_quantize`` keeps an arbitrary one).

Input features (``point_features``): the intensity, scaled to [0, 1] for both datasets so that a network
pretrained on nuScenes reads SemanticKITTI scans on the same scale. nuScenes stores intensity as 0..255
(divided by 255 here); SemanticKITTI and the KITTI object benchmark store reflectance as 0..1 (kept as is).
Values outside [0, 1] after scaling are clipped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

INTENSITY_SCALE = {"nuscenes": 1.0 / 255.0, "semantickitti": 1.0, "kitti_object": 1.0}


def quantize(points: np.ndarray, mode: Literal["cylindrical", "cartesian"] = "cylindrical", size: float = 0.1,
             azimuth_step_deg: float = 1.0) -> np.ndarray:
    """Integer voxel coordinates of every point.

    Parameters
    ----------
    points : (N, 3+) points; only x, y, z are used. Must be finite.
    mode : ``"cylindrical"`` (rho, azimuth, z) or ``"cartesian"`` (x, y, z).
    size : voxel size in metres (rho and z for cylindrical voxels).
    azimuth_step_deg : angular size of cylindrical voxels in degrees.

    Returns
    -------
    (N, 3) int64 voxel coordinates (may be negative).
    """
    xyz = np.asarray(points)[:, :3].astype(np.float64)
    if not np.isfinite(xyz).all():
        raise ValueError("voxelize: points must be finite (read_points drops NaN and infinite points)")
    if mode == "cylindrical":
        scaled = np.empty_like(xyz)
        scaled[:, 0] = np.hypot(xyz[:, 0], xyz[:, 1]) / size
        scaled[:, 1] = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) / azimuth_step_deg
        scaled[:, 2] = xyz[:, 2] / size
    elif mode == "cartesian":
        scaled = xyz / size
    else:
        raise ValueError(f"voxelize: unknown mode {mode!r}; expected 'cylindrical' or 'cartesian'")
    return np.floor(scaled).astype(np.int64)


def voxelize(points: np.ndarray, mode: Literal["cylindrical", "cartesian"] = "cylindrical", size: float = 0.1,
             azimuth_step_deg: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxelize a scan: one voxel per occupied cell, with the kept point and each point's voxel.

    Parameters
    ----------
    points : (N, 3+) finite points; only x, y, z are used.
    mode, size, azimuth_step_deg : as in :func:`quantize`.

    Returns
    -------
    coords : (V, 3) int32 voxel coordinates, sorted lexicographically.
    kept_index : (V,) int64 index of the first point of each voxel; ``points[kept_index]`` is one point per voxel.
    inverse_map : (N,) int64 voxel of each point; ``coords[inverse_map]`` equals each point's own coordinates.
    """
    grid = quantize(points, mode, size, azimuth_step_deg)
    if grid.shape[0] == 0:
        return np.zeros((0, 3), np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    low = grid.min(axis=0)
    extent = grid.max(axis=0) - low + 1
    if float(extent[0]) * float(extent[1]) * float(extent[2]) >= 2.0**62:
        raise ValueError(f"voxelize: the scan spans {extent.tolist()} voxels, too many for 64-bit keys; "
                         f"use a larger voxel size")
    # one int64 key per point, ordered like the coordinate rows, so a 1-D unique replaces a slow row unique
    shifted = grid - low
    keys = (shifted[:, 0] * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]
    _, kept_index, inverse_map = np.unique(keys, return_index=True, return_inverse=True)
    coords = grid[kept_index].astype(np.int32)
    return coords, kept_index.astype(np.int64), inverse_map.astype(np.int64).reshape(-1)


def point_features(points: np.ndarray, dataset: str) -> np.ndarray:
    """Input features of points: the intensity scaled to [0, 1] (see the module docstring).

    Parameters
    ----------
    points : (N, 4+) points x, y, z, intensity, ...
    dataset : ``"nuscenes"`` (intensity 0..255) or ``"semantickitti"`` (reflectance 0..1).

    Returns
    -------
    (N, 1) float32 features.
    """
    try:
        scale = INTENSITY_SCALE[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(INTENSITY_SCALE)}") from None
    intensity = np.asarray(points)[:, 3:4].astype(np.float32) * np.float32(scale)
    return np.clip(intensity, 0.0, 1.0)
