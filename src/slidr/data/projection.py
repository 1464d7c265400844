"""Projection of lidar points into camera images: which points a camera sees, and at which pixel.

A point is kept by a camera when it lies more than ``min_depth`` (1 m) in front of it and strictly inside the
image with a one-pixel margin, ``1 < u < W - 1`` and ``1 < v < H - 1`` (the nuScenes devkit's
``map_pointcloud_to_image`` mask); its pixel is ``(row, col) = (round(v), round(u))`` (numpy's round half to
even).

nuScenes points go through the devkit's chain lidar -> ego (lidar time) -> global -> ego (camera time) ->
camera. The devkit applies each step to float32 points, one rotation and one translation at a time, and the
global frame has coordinates of hundreds of metres, so its float32 roundings move pixels by up to ~0.03 px
compared with one composed float64 transform; that flips the rounding of a few dozen pixels per keyframe.
:func:`project_to_cameras` therefore repeats the devkit's arithmetic step by step when the sample carries the
chain's parts (``lidar_to_ego``, ``ego_pose`` and each camera's ``ego_pose`` and ``camera_to_ego``, as written by
``slidr prepare nuscenes``), and matches its kept points and pixels exactly. Other samples (SemanticKITTI,
hand-written indexes) use the composed ``lidar_to_camera`` in float64, as :func:`project_points` does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from slidr.errors import DataError


def project_points(points: np.ndarray, lidar_to_camera: np.ndarray, intrinsic: np.ndarray,
                   image_hw: Sequence[int], min_depth: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Project points with one composed rigid transform (float64) and keep those the camera sees.

    Parameters
    ----------
    points : (N, 3+) lidar points; only x, y, z are used.
    lidar_to_camera : (4, 4) rigid transform from the lidar frame to the camera frame (z forward).
    intrinsic : (3, 3) camera matrix.
    image_hw : (height, width) of the image in pixels.
    min_depth : points at this depth or closer are dropped.

    Returns
    -------
    point_index : (M,) int64 indices into ``points`` of the kept points, increasing.
    pixel_rc : (M, 2) int64 (row, column) of each kept point.
    """
    xyz = np.asarray(points)[:, :3].astype(np.float64)
    transform = np.asarray(lidar_to_camera, dtype=np.float64)
    camera = xyz @ transform[:3, :3].T + transform[:3, 3]
    image = camera @ np.asarray(intrinsic, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = image[:, 0] / image[:, 2]
        v = image[:, 1] / image[:, 2]
    return _visible(camera[:, 2], u, v, image_hw, min_depth)


def project_to_cameras(points: np.ndarray, sample: dict, cameras: Optional[Sequence[str]] = None,
                       min_depth: float = 1.0, allow_empty: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pair points with pixels of every camera of a sample, from one copy of the cloud.

    Parameters
    ----------
    points : (N, 3+) lidar points of the sample; only x, y, z are used.
    sample : one sample of a :class:`~slidr.data.index.DatasetIndex` (its ``cameras`` give image size,
        intrinsics and transforms).
    cameras : camera channels in image order (``k`` in the result is the position here); default: the
        sample's cameras in index order.
    min_depth : points at this depth or closer to a camera are not paired with it.
    allow_empty : if False, a sample whose calibration puts no point in any image raises :class:`DataError`.

    Returns
    -------
    pairing_points : (P,) int64 point indices.
    pairing_images : (P, 3) int64 (camera k, row, column), grouped by camera.
    """
    channels = list(sample["cameras"]) if cameras is None else list(cameras)
    global_points = _devkit_lidar_to_global(points, sample) if _has_devkit_chain(sample, channels) else None
    if global_points is not None:
        candidates_per_camera = _devkit_candidates(points, sample, channels, min_depth)
    point_parts, image_parts = [], []
    for k, channel in enumerate(channels):
        camera = _camera(sample, channel)
        image_hw = (camera["height"], camera["width"])
        if global_points is None:
            index, pixel_rc = project_points(points, camera["lidar_to_camera"], camera["intrinsic"], image_hw,
                                             min_depth)
        else:
            # the devkit's step-by-step arithmetic only for the points that may be visible: it works column by
            # column, so a subset gets the same values for its points as the whole cloud
            candidates = candidates_per_camera[k]
            subset = global_points if candidates is None else global_points[:, candidates]
            depth, u, v = _devkit_global_to_image(subset, camera)
            index, pixel_rc = _visible(depth, u, v, image_hw, min_depth)
            if candidates is not None:
                index = candidates[index]
        point_parts.append(index)
        image_parts.append(np.column_stack([np.full(index.size, k, dtype=np.int64), pixel_rc]))
    pairing_points = np.concatenate(point_parts) if point_parts else np.zeros(0, dtype=np.int64)
    pairing_images = np.concatenate(image_parts) if image_parts else np.zeros((0, 3), dtype=np.int64)
    if not allow_empty and pairing_points.size == 0:
        raise DataError(
            f"sample {sample.get('token')} (lidar file {sample.get('lidar')}): its calibration puts no point in "
            f"any of the images of {', '.join(channels) or 'no camera'}; check the camera transforms and "
            f"intrinsics in the index"
        )
    return pairing_points, pairing_images


def pixel_coordinates(points: np.ndarray, sample: dict, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """Depth and unrounded pixel coordinates of every point in one camera, as used by :func:`project_to_cameras`.

    Returns
    -------
    depth : (N,) depth in front of the camera (float32 on the devkit's chain, else float64).
    uv : (N, 2) float64 (column u, row v), not masked.
    """
    camera = _camera(sample, channel)
    if _has_devkit_chain(sample, [channel]):
        depth, u, v = _devkit_global_to_image(_devkit_lidar_to_global(points, sample), camera)
        return depth, np.column_stack([u, v])
    transform = np.asarray(camera["lidar_to_camera"], dtype=np.float64)
    xyz = np.asarray(points)[:, :3].astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
    image = xyz @ np.asarray(camera["intrinsic"], dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return xyz[:, 2], image[:, :2] / image[:, 2:3]


def _visible(depth: np.ndarray, u: np.ndarray, v: np.ndarray, image_hw: Sequence[int],
             min_depth: float) -> tuple[np.ndarray, np.ndarray]:
    height, width = int(image_hw[0]), int(image_hw[1])
    with np.errstate(invalid="ignore"):
        mask = (depth > min_depth) & (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)
    index = np.flatnonzero(mask)
    pixel_rc = np.empty((index.size, 2), dtype=np.int64)
    pixel_rc[:, 0] = np.round(v[index])
    pixel_rc[:, 1] = np.round(u[index])
    return index, pixel_rc


def _camera(sample: dict, channel: str) -> dict:
    try:
        return sample["cameras"][channel]
    except KeyError:
        raise DataError(
            f"sample {sample.get('token')} has no camera {channel!r}; it has {', '.join(sample['cameras']) or 'none'}"
        ) from None


def _has_devkit_chain(sample: dict, channels: Sequence[str]) -> bool:
    if "lidar_to_ego" not in sample or "ego_pose" not in sample:
        return False
    return all("camera_to_ego" in sample["cameras"].get(c, {}) and "ego_pose" in sample["cameras"].get(c, {})
               for c in channels)


# The devkit's arithmetic, step by step (nuscenes.utils.data_classes.PointCloud.rotate / translate and
# nuscenes.utils.geometry_utils.view_points): points stay float32 between steps, each step computes in float64.


def _rotate(points: np.ndarray, rotation: np.ndarray) -> None:
    points[:] = np.dot(rotation, points)


def _translate(points: np.ndarray, translation: np.ndarray) -> None:
    for i in range(3):
        points[i, :] = points[i, :] + translation[i]


def _devkit_lidar_to_global(points: np.ndarray, sample: dict) -> np.ndarray:
    """(3, N) float32 points in the global frame: lidar -> ego -> global, as the devkit computes them."""
    cloud = np.array(np.asarray(points)[:, :3].T, dtype=np.float32, order="C")
    for transform in (sample["lidar_to_ego"], sample["ego_pose"]):
        transform = np.asarray(transform, dtype=np.float64)
        _rotate(cloud, transform[:3, :3])
        _translate(cloud, transform[:3, 3])
    return cloud


# How far (metres) the devkit's float32 chain may put a point from where one composed transform of the lidar points
# puts it: its roundings are ~1e-4 m in the global frame (coordinates of a few km) and ~1e-5 m after that, and the
# float32 product below adds ~1e-5 m for points within a few hundred metres; 1 cm is far above all of them.
_CHAIN_TOLERANCE_M = 0.01


def _devkit_candidates(points: np.ndarray, sample: dict, channels: Sequence[str], min_depth: float
                       ) -> list[Optional[np.ndarray]]:
    """Per camera, indices of the points that may be visible: a superset of what the devkit chain keeps.

    One composed lidar -> camera transform per camera, applied to the lidar points in float32, with a margin of
    ``_CHAIN_TOLERANCE_M`` metres on every camera-frame coordinate. None (every point) for a camera where the
    test would not be conservative: intrinsics whose last row is not (0, 0, 1), or a minimum depth within the
    margin of 0.

    Parameters
    ----------
    points : (N, 3+) lidar points.

    Returns
    -------
    One (M_k,) int64 increasing index array (or None) per channel.
    """
    margin = _CHAIN_TOLERANCE_M
    lidar_to_global = np.asarray(sample["ego_pose"], np.float64) @ np.asarray(sample["lidar_to_ego"], np.float64)
    rows, shifts, bounds, usable = [], [], [], []
    for channel in channels:
        camera = sample["cameras"][channel]
        intrinsic = np.asarray(camera["intrinsic"], dtype=np.float64)
        usable.append(bool(np.array_equal(intrinsic[2], [0.0, 0.0, 1.0]) and min_depth - margin > 0))
        global_to_camera = np.linalg.inv(np.asarray(camera["ego_pose"], np.float64)
                                         @ np.asarray(camera["camera_to_ego"], np.float64))
        transform = global_to_camera @ lidar_to_global
        # depth z, then image x and y (u z and v z), as affine functions of the lidar point
        projection = np.concatenate([transform[2:3], intrinsic[:2] @ transform[:3]])
        rows.append(projection[:, :3])
        shifts.append(projection[:, 3])
        height, width = float(camera["height"]), float(camera["width"])
        # |error| of x (of y) <= (row 0 (1) of |K| summed) * margin; of the bounds (W - 1) z, (H - 1) z: W (H) margin
        bounds.append(((np.abs(intrinsic[0]).sum() + width) * margin, (np.abs(intrinsic[1]).sum() + height) * margin,
                       width - 1.0, height - 1.0))
    xyz = np.asarray(points)[:, :3].astype(np.float32, copy=False)
    values = np.concatenate(rows).astype(np.float32) @ xyz.T
    values += np.concatenate(shifts).astype(np.float32)[:, None]  # in place: a new (3K, N) array costs more
    candidates: list[Optional[np.ndarray]] = []
    for k, (slack_x, slack_y, right, bottom) in enumerate(bounds):
        if not usable[k]:
            candidates.append(None)
            continue
        depth, x, y = values[3 * k:3 * k + 3]
        keep = depth > min_depth - margin
        keep &= x > depth - slack_x
        keep &= x < right * depth + slack_x
        keep &= y > depth - slack_y
        keep &= y < bottom * depth + slack_y
        candidates.append(np.flatnonzero(keep))
    return candidates


def _devkit_global_to_image(global_points: np.ndarray, camera: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (float32) and pixel u, v (float64) of (3, N) global points: global -> ego -> camera -> image."""
    cloud = global_points.copy()
    for transform in (camera["ego_pose"], camera["camera_to_ego"]):
        transform = np.asarray(transform, dtype=np.float64)
        _translate(cloud, -transform[:3, 3])
        _rotate(cloud, transform[:3, :3].T)
    view = np.eye(4)
    view[:3, :3] = np.asarray(camera["intrinsic"], dtype=np.float64)
    homogeneous = np.concatenate((cloud, np.ones((1, cloud.shape[1]))))
    image = np.dot(view, homogeneous)
    with np.errstate(divide="ignore", invalid="ignore"):  # element-wise, so the same quotients as the devkit's
        return cloud[2], image[0] / image[2], image[1] / image[2]
