"""Voxelization of a scan (cylindrical or cartesian) and the per-point input features.

Cylindrical voxels, as in SLidR: ``(floor(rho / size), floor(azimuth_deg / azimuth_step_deg), floor(z / size))``
with ``rho = sqrt(x^2 + y^2)`` and ``azimuth = atan2(y, x)`` in degrees (-180..180); cartesian voxels:
``floor((x, y, z) / size)``. One point is kept per voxel: the first one in point order (deterministic; the
authors' ``sparse_quantize`` keeps an arbitrary one).

Input features (``point_features``), one channel per point, by ``data.point_features``:

- ``"release"`` (default): what the authors' loaders feed the network, which produced the paper's numbers:
  nuScenes intensity as stored (0..255; ``pretrain/dataloader_nuscenes.py``, ``downstream/dataloader_nuscenes.py``),
  SemanticKITTI remission + 1 (1..2; ``downstream/dataloader_kitti.py``). The offset matters: a sparse convolution
  sums over the occupied neighbours only, so with +1 the first layer also sees the occupancy pattern of points
  with zero remission. The scale matters for training even though batch norm follows the first convolution: it
  sets that layer's effective learning rate and weight decay.
- ``"unit"``: the intensity scaled to [0, 1] for every dataset (nuScenes / 255, SemanticKITTI and the KITTI object
  benchmark as is, clipped), slidr 0.1's choice.

The KITTI object benchmark's reflectance (0..1) is fed as stored under ``"release"`` (OpenPCDet's loaders).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

INTENSITY_SCALE = {"nuscenes": 1.0 / 255.0, "semantickitti": 1.0, "kitti_object": 1.0}  # "unit" features
RELEASE_OFFSET = {"nuscenes": 0.0, "semantickitti": 1.0, "kitti_object": 0.0}  # "release": stored value + offset
FEATURE_CONVENTIONS = ("release", "unit")


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
    return np.floor(scaled, out=scaled).astype(np.int64)


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
    # per column: the same values as reducing (N, 3) over axis 0, several times faster
    low = np.array([grid[:, axis].min() for axis in range(3)])
    extent = np.array([grid[:, axis].max() for axis in range(3)]) - low + 1
    if float(extent[0]) * float(extent[1]) * float(extent[2]) >= 2.0**62:
        raise ValueError(f"voxelize: the scan spans {extent.tolist()} voxels, too many for 64-bit keys; "
                         f"use a larger voxel size")
    # one int64 key per point, ordered like the coordinate rows, so a 1-D unique replaces a slow row unique
    shifted = grid - low
    keys = (shifted[:, 0] * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]
    _, kept_index, inverse_map = np.unique(keys, return_index=True, return_inverse=True)
    coords = np.take(grid, kept_index, axis=0).astype(np.int32)  # np.take: faster than fancy row indexing
    return coords, kept_index.astype(np.int64), inverse_map.astype(np.int64).reshape(-1)


def point_features(points: np.ndarray, dataset: str, convention: str = "release") -> np.ndarray:
    """Input features of points (see the module docstring).

    Parameters
    ----------
    points : (N, 4+) points x, y, z, intensity, ...
    dataset : ``"nuscenes"`` (intensity 0..255) or ``"semantickitti"`` (reflectance 0..1).
    convention : ``"release"`` (nuScenes intensity as stored, SemanticKITTI remission + 1) or ``"unit"``
        (scaled to [0, 1]).

    Returns
    -------
    (N, 1) float32 features.
    """
    if dataset not in INTENSITY_SCALE:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(INTENSITY_SCALE)}")
    intensity = np.asarray(points)[:, 3:4].astype(np.float32)
    if convention == "release":
        return intensity + np.float32(RELEASE_OFFSET[dataset])
    if convention == "unit":
        return np.clip(intensity * np.float32(INTENSITY_SCALE[dataset]), 0.0, 1.0)
    raise ValueError(f"unknown point feature convention {convention!r}; expected one of "
                     f"{', '.join(FEATURE_CONVENTIONS)}")
