"""Oriented 3D boxes: geometry, frame conversions (lidar, KITTI camera, nuScenes global) and KITTI files.

Box convention (every ``(K, 7)`` box array of slidr)
----------------------------------------------------
``[x, y, z, l, w, h, yaw]`` in a right-handed, z-up frame (a lidar frame, or the synthetic world's street frame):

- ``(x, y, z)``: the box's centre (its centre of gravity, *not* the bottom centre);
- ``l``: extent along the box's heading axis (a vehicle's length, front to back), ``w``: the horizontal extent
  across it, ``h``: the vertical extent;
- ``yaw``: angle from the frame's +x axis to the heading axis, counter-clockwise seen from above (a rotation
  about +z), wrapped to ``[-pi, pi)``. The box is upright in its frame (no pitch or roll).

This is the lidar-frame layout of OpenPCDet and of the nuScenes devkit's ``Box`` (whose ``wlh`` is ``(w, l, h)``
and whose local x axis is the length axis). In a nuScenes lidar frame (x right, y forward) a vehicle driving
straight ahead has ``yaw = pi / 2``; in a KITTI velodyne frame (x forward, y left) it has ``yaw = 0``.

KITTI conventions (object development kit ``readme.txt``)
--------------------------------------------------------
The rectified camera frame of camera 0 has x right, y down, z forward; ``R0_rect @ Tr_velo_to_cam`` takes
velodyne points there and ``P2`` projects it to image_2. A ``label_2`` line is
``type truncated occluded alpha left top right bottom h w l x y z rotation_y [score]``: the location ``(x, y, z)``
is the box's *bottom* centre in the rectified frame, ``rotation_y`` the rotation about the camera's y axis
(``0``: heading along +x, to the right; the heading of ``ry`` is ``(cos ry, 0, -sin ry)``), ``alpha`` the
observation angle ``ry - atan2(x, z)``, the 2D box in image_2 pixels.

A real calibration's lidar z axis is not exactly the camera's -y axis (about 0.01 rad apart), so a box upright in
one frame is slightly tilted in the other. Conversions keep the box upright in the target frame: the bottom
centre is mapped exactly; the heading is mapped through the linear map between the lidar's horizontal plane and
the camera's x-z plane (:func:`lidar_to_kitti_camera`), which is invertible, so lidar -> camera -> lidar returns
the same box to rounding, and which reduces to the usual ``ry = -yaw - pi/2`` for axis-aligned calibrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, cast

import numpy as np

from slidr.errors import DataError

BOX_DIM = 7
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
KITTI_CALIBRATION_KEYS = ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo")
_CALIBRATION_SHAPES = {"P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4), "R0_rect": (3, 3),
                       "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4)}

# corner k of a box: (+-l/2, +-w/2, +-h/2) in the box's own axes; bottom face 0-3, top face 4-7, each
# front-left, front-right, rear-right, rear-left ("front" = +heading, "left" = +w side)
_CORNER_SIGNS = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                          [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=np.float64) / 2.0
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


# --------------------------------------------------------------------------------------------------------------
# Boxes in one frame.
# --------------------------------------------------------------------------------------------------------------


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Angles wrapped to ``[-pi, pi)``; any shape."""
    return (np.asarray(angle, dtype=np.float64) + np.pi) % (2.0 * np.pi) - np.pi


def as_boxes(boxes: np.ndarray | Sequence, what: str = "boxes") -> np.ndarray:
    """``boxes`` as a (K, 7) float64 array (an empty input gives (0, 7)); a clear error for other shapes."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, BOX_DIM))
    if array.ndim != 2 or array.shape[1] != BOX_DIM:
        raise DataError(f"{what} must be a (K, 7) array [x, y, z, l, w, h, yaw], got shape {array.shape}")
    return array


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners of each box.

    Parameters
    ----------
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]``.

    Returns
    -------
    (K, 8, 3) float64 corners in the boxes' frame; corners 0-3 are the bottom face and 4-7 the top face, each in
    the order front-left, front-right, rear-right, rear-left (front = heading, left = +w side); ``BOX_EDGES``
    lists the 12 edges as corner pairs.
    """
    boxes = as_boxes(boxes)
    local = _CORNER_SIGNS[None] * boxes[:, None, 3:6]  # (K, 8, 3)
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[:, None, :3]


def points_in_boxes_mask(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Which points lie inside which box (faces included).

    Parameters
    ----------
    points : (N, 3+) points in the boxes' frame; only x, y, z are used.
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]``.
    margin : metres added to every half extent (negative shrinks the boxes).

    Returns
    -------
    (K, N) bool.
    """
    boxes = as_boxes(boxes)
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    mask = np.zeros((len(boxes), len(xyz)), dtype=bool)
    for k, (cx, cy, cz, length, width, height, yaw) in enumerate(boxes):
        half_l, half_w, half_h = length / 2 + margin, width / 2 + margin, height / 2 + margin
        # cheap test first: only points within the box's bounding circle and height are rotated
        radius = math.hypot(half_l, half_w)
        near = np.flatnonzero((np.abs(xyz[:, 0] - cx) <= radius) & (np.abs(xyz[:, 1] - cy) <= radius)
                              & (np.abs(xyz[:, 2] - cz) <= half_h))
        dx, dy = xyz[near, 0] - cx, xyz[near, 1] - cy
        cos, sin = math.cos(yaw), math.sin(yaw)
        along = dx * cos + dy * sin
        across = -dx * sin + dy * cos
        mask[k, near[(np.abs(along) <= half_l) & (np.abs(across) <= half_w)]] = True
    return mask


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The box each point lies in.

    Parameters
    ----------
    points : (N, 3+) points in the boxes' frame.
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]``.
    margin : metres added to every half extent.

    Returns
    -------
    (N,) int64 box index, ``-1`` for points in no box; a point in several boxes gets the lowest index.
    """
    mask = points_in_boxes_mask(points, boxes, margin)
    if mask.shape[0] == 0:
        return np.full(mask.shape[1], -1, dtype=np.int64)
    return np.where(mask.any(axis=0), mask.argmax(axis=0), -1).astype(np.int64)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Express boxes in another frame.

    The centre goes through the rigid transform; the heading axis is rotated and projected on the new frame's
    horizontal plane (exact when the transform turns about z only, as between lidar, ego, global and street
    frames of a level vehicle; otherwise the box stays upright in the new frame and loses the tilt).

    Parameters
    ----------
    boxes : (K, 7) boxes in the source frame.
    matrix : (4, 4) rigid transform, source -> target.

    Returns
    -------
    (K, 7) boxes in the target frame (same sizes).
    """
    boxes = as_boxes(boxes)
    matrix = np.asarray(matrix, dtype=np.float64)
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ matrix[:3, :3].T + matrix[:3, 3]
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], axis=1) @ matrix[:3, :3].T
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    return out


# --------------------------------------------------------------------------------------------------------------
# nuScenes: global-frame annotations.
# --------------------------------------------------------------------------------------------------------------


def nuscenes_to_lidar(translation: np.ndarray, size: np.ndarray, rotation: np.ndarray,
                      lidar_to_global: np.ndarray) -> np.ndarray:
    """nuScenes ``sample_annotation`` boxes (global frame) -> lidar-frame boxes.

    Parameters
    ----------
    translation : (K, 3) box centres in the global frame.
    size : (K, 3) ``(w, l, h)`` as nuScenes stores it.
    rotation : (K, 4) unit quaternions ``(w, x, y, z)``, box -> global.
    lidar_to_global : (4, 4) the sample's ``ego_pose @ lidar calibrated_sensor`` (index ``lidar_to_global``).

    Returns
    -------
    (K, 7) ``[x, y, z, l, w, h, yaw]`` in the lidar frame (pitch and roll of the box in that frame dropped).
    """
    translation = np.asarray(translation, dtype=np.float64).reshape(-1, 3)
    size = np.asarray(size, dtype=np.float64).reshape(-1, 3)
    rotation = np.asarray(rotation, dtype=np.float64).reshape(-1, 4)
    global_to_lidar = np.linalg.inv(np.asarray(lidar_to_global, dtype=np.float64))
    out = np.zeros((len(translation), BOX_DIM))
    out[:, :3] = translation @ global_to_lidar[:3, :3].T + global_to_lidar[:3, 3]
    out[:, 3], out[:, 4], out[:, 5] = size[:, 1], size[:, 0], size[:, 2]
    for k, quaternion in enumerate(rotation):
        heading = global_to_lidar[:3, :3] @ quaternion_to_matrix(quaternion)[:, 0]
        out[k, 6] = math.atan2(heading[1], heading[0])
    out[:, 6] = wrap_angle(out[:, 6])
    return out


def lidar_to_nuscenes(boxes: np.ndarray, lidar_to_global: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lidar-frame boxes -> nuScenes ``translation``, ``size``, ``rotation`` in the global frame.

    Parameters
    ----------
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]`` in the lidar frame.
    lidar_to_global : (4, 4).

    Returns
    -------
    translation : (K, 3); size : (K, 3) ``(w, l, h)``; rotation : (K, 4) quaternions ``(w, x, y, z)`` with
    ``w >= 0``.
    """
    boxes = as_boxes(boxes)
    lidar_to_global = np.asarray(lidar_to_global, dtype=np.float64)
    translation = boxes[:, :3] @ lidar_to_global[:3, :3].T + lidar_to_global[:3, 3]
    size = boxes[:, [4, 3, 5]].copy()
    rotation = np.zeros((len(boxes), 4))
    for k, yaw in enumerate(boxes[:, 6]):
        rotation[k] = matrix_to_quaternion(lidar_to_global[:3, :3] @ _yaw_matrix(yaw))
    return translation, size, rotation


def quaternion_to_matrix(quaternion: Sequence[float]) -> np.ndarray:
    """(3, 3) rotation matrix of a quaternion ``(w, x, y, z)`` (normalised first), as pyquaternion computes it."""
    from pyquaternion import Quaternion

    return Quaternion(np.asarray(quaternion, dtype=np.float64)).normalised.rotation_matrix


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion ``(w, x, y, z)``, ``w >= 0``, of a (3, 3) rotation matrix."""
    from pyquaternion import Quaternion

    q = Quaternion(matrix=np.asarray(rotation, dtype=np.float64), atol=1e-7).normalised.elements
    return -q if q[0] < 0 else q


def _yaw_matrix(yaw: float) -> np.ndarray:
    cos, sin = math.cos(yaw), math.sin(yaw)
    return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------------------------
# KITTI: rectified camera frame, image boxes.
# --------------------------------------------------------------------------------------------------------------


def kitti_velo_to_rect(r0_rect: np.ndarray, tr_velo_to_cam: np.ndarray) -> np.ndarray:
    """(4, 4) transform velodyne -> rectified camera 0: ``R0_rect (3, 3) @ Tr_velo_to_cam (3, 4)``, homogeneous."""
    rect = np.eye(4)
    rect[:3, :3] = np.asarray(r0_rect, dtype=np.float64).reshape(3, 3)
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :] = np.asarray(tr_velo_to_cam, dtype=np.float64).reshape(3, 4)
    return rect @ velo_to_cam


def _heading_map(velo_to_rect: np.ndarray) -> np.ndarray:
    """(2, 2) linear map from a lidar horizontal direction (x, y) to the camera x-z plane: (x_cam, z_cam)."""
    rotation = np.asarray(velo_to_rect, dtype=np.float64)[:3, :3]
    return rotation[np.ix_([0, 2], [0, 1])]


def lidar_to_kitti_camera(boxes: np.ndarray, velo_to_rect: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lidar-frame boxes -> KITTI label geometry in the rectified camera frame.

    Parameters
    ----------
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]`` in the velodyne frame.
    velo_to_rect : (4, 4) velodyne -> rectified camera 0 (:func:`kitti_velo_to_rect`).

    Returns
    -------
    location : (K, 3) bottom centre ``(x, y, z)`` in the rectified frame; dimensions : (K, 3) ``(h, w, l)``;
    rotation_y : (K,) in ``[-pi, pi)``.
    """
    boxes = as_boxes(boxes)
    velo_to_rect = np.asarray(velo_to_rect, dtype=np.float64)
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2
    location = bottom @ velo_to_rect[:3, :3].T + velo_to_rect[:3, 3]
    dimensions = boxes[:, [5, 4, 3]].copy()
    plane = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], axis=1) @ _heading_map(velo_to_rect).T
    rotation_y = wrap_angle(np.arctan2(-plane[:, 1], plane[:, 0]))
    return location, dimensions, rotation_y


def kitti_camera_to_lidar(location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray,
                          velo_to_rect: np.ndarray) -> np.ndarray:
    """KITTI label geometry -> lidar-frame boxes (the exact inverse of :func:`lidar_to_kitti_camera`).

    Parameters
    ----------
    location : (K, 3) bottom centres in the rectified camera frame.
    dimensions : (K, 3) ``(h, w, l)``.
    rotation_y : (K,).
    velo_to_rect : (4, 4) velodyne -> rectified camera 0.

    Returns
    -------
    (K, 7) ``[x, y, z, l, w, h, yaw]`` in the velodyne frame.
    """
    location = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    dimensions = np.asarray(dimensions, dtype=np.float64).reshape(-1, 3)
    rotation_y = np.asarray(rotation_y, dtype=np.float64).reshape(-1)
    rect_to_velo = np.linalg.inv(np.asarray(velo_to_rect, dtype=np.float64))
    out = np.zeros((len(location), BOX_DIM))
    out[:, :3] = location @ rect_to_velo[:3, :3].T + rect_to_velo[:3, 3]
    out[:, 2] += dimensions[:, 0] / 2
    out[:, 3], out[:, 4], out[:, 5] = dimensions[:, 2], dimensions[:, 1], dimensions[:, 0]
    camera_plane = np.stack([np.cos(rotation_y), -np.sin(rotation_y)], axis=1)
    heading = np.linalg.solve(_heading_map(velo_to_rect), camera_plane.T).T
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    return out


def observation_angle(location: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """KITTI ``alpha``: ``rotation_y - atan2(x, z)`` of the (bottom centre) location, wrapped to ``[-pi, pi)``.

    Parameters
    ----------
    location : (K, 3) in the rectified camera frame.
    rotation_y : (K,).

    Returns
    -------
    (K,) float64.
    """
    location = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    return wrap_angle(np.asarray(rotation_y, dtype=np.float64) - np.arctan2(location[:, 0], location[:, 2]))


def kitti_camera_corners(location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """The 8 corners of KITTI label boxes in the rectified camera frame (the devkit's ``computeBox3D``).

    Parameters
    ----------
    location : (K, 3) bottom centres; dimensions : (K, 3) ``(h, w, l)``; rotation_y : (K,).

    Returns
    -------
    (K, 8, 3) float64, corners in the order of :func:`box_corners` (0-3 bottom, 4-7 top).
    """
    location = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    dimensions = np.asarray(dimensions, dtype=np.float64).reshape(-1, 3)
    rotation_y = np.asarray(rotation_y, dtype=np.float64).reshape(-1)
    height, width, length = dimensions[:, 0:1], dimensions[:, 1:2], dimensions[:, 2:3]
    along = _CORNER_SIGNS[None, :, 0] * length  # (K, 8) along the heading
    across = _CORNER_SIGNS[None, :, 1] * width  # +w side = left of the heading
    up = (_CORNER_SIGNS[None, :, 2] + 0.5) * height  # 0 at the bottom, h at the top
    cos, sin = np.cos(rotation_y)[:, None], np.sin(rotation_y)[:, None]
    # heading (cos ry, 0, -sin ry); its left, up x heading with up = -y: (sin ry, 0, cos ry) (the devkit's local z)
    x = along * cos + across * sin
    z = -along * sin + across * cos
    return np.stack([x, -up, z], axis=-1) + location[:, None, :]


@dataclass(frozen=True)
class ImageBoxes:
    """2D boxes of projected 3D boxes (see :func:`project_boxes_to_image`); rows ``[left, top, right, bottom]``."""

    full: np.ndarray  # (K, 4) extent of the projection, not clipped to the image
    clipped: np.ndarray  # (K, 4) the same clipped to the image, [0, W - 1] x [0, H - 1]
    valid: np.ndarray  # (K,) bool: some of the box lies in front of the camera and inside the image
    truncation: np.ndarray  # (K,) 1 - clipped area / full area (1 where nothing of the box is in front)


def project_boxes_to_image(corners: np.ndarray, projection: np.ndarray, image_hw: Optional[Sequence[int]],
                           near: float = 0.1) -> ImageBoxes:
    """2D image boxes of 3D boxes: the extent of their projected corners, clipped to the image.

    Parts of a box closer than ``near`` to the camera plane are cut off first (its edges are clipped at the
    plane), so boxes beside or partly behind the camera get the 2D extent of their visible part.

    Parameters
    ----------
    corners : (K, 8, 3) corners in the camera frame (z forward), ordered as :func:`box_corners`.
    projection : (3, 4) camera matrix (KITTI ``P2``; ``[K | 0]`` for a plain intrinsic).
    image_hw : (height, width) in pixels; None: no image border (``clipped`` is ``full``, ``valid`` means some of
        the box is in front of the plane).
    near : depth of the clipping plane, metres (depth as the third row of ``projection`` computes it).

    Returns
    -------
    ImageBoxes
    """
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 8, 3)
    projection = np.asarray(projection, dtype=np.float64)
    count = len(corners)
    full = np.zeros((count, 4))
    homogeneous_all = corners @ projection[:, :3].T + projection[:, 3]  # (K, 8, 3): u*d, v*d, d
    depth_all = homogeneous_all[..., 2]
    # boxes wholly in front of the plane: the extent of their 8 projected corners
    front = (depth_all >= near).all(axis=1)
    uv_front = homogeneous_all[front, :, :2] / depth_all[front, :, None]
    full[front] = np.concatenate([uv_front.min(axis=1), uv_front.max(axis=1)], axis=1)
    valid_front = front.copy()
    edges = np.array(BOX_EDGES)
    for k in np.flatnonzero(~front & (depth_all >= near).any(axis=1)):  # boxes cut by the plane
        homogeneous = homogeneous_all[k]
        depth = depth_all[k]
        keep = [homogeneous[depth >= near]]
        a, b = edges[:, 0], edges[:, 1]
        crossing = (depth[a] >= near) != (depth[b] >= near)
        if crossing.any():
            t = (near - depth[a[crossing]]) / (depth[b[crossing]] - depth[a[crossing]])
            keep.append(homogeneous[a[crossing]] + t[:, None] * (homogeneous[b[crossing]] - homogeneous[a[crossing]]))
        points = np.concatenate(keep)
        uv = points[:, :2] / points[:, 2:3]
        full[k] = (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
        valid_front[k] = True
    clipped = full.copy()
    if image_hw is not None:
        height, width = int(image_hw[0]), int(image_hw[1])
        clipped[:, [0, 2]] = np.clip(full[:, [0, 2]], 0.0, width - 1.0)
        clipped[:, [1, 3]] = np.clip(full[:, [1, 3]], 0.0, height - 1.0)
    valid = valid_front & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    full_area = np.maximum(full[:, 2] - full[:, 0], 0.0) * np.maximum(full[:, 3] - full[:, 1], 0.0)
    clipped_area = np.where(valid, (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        truncation = np.where(full_area > 0, 1.0 - clipped_area / np.where(full_area > 0, full_area, 1.0), 1.0)
    return ImageBoxes(full, clipped, valid, np.clip(truncation, 0.0, 1.0))


# --------------------------------------------------------------------------------------------------------------
# KITTI files: label_2 and calib.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class KittiLabels:
    """The objects of one KITTI ``label_2`` file (K lines), column by column.

    ``type`` (K,) str; ``truncated`` (K,) float in [0, 1] (-1 for DontCare); ``occluded`` (K,) int 0 fully
    visible, 1 partly occluded, 2 largely occluded, 3 unknown (-1 for DontCare); ``alpha`` (K,) radians;
    ``bbox`` (K, 4) ``left, top, right, bottom`` pixels; ``dimensions`` (K, 3) ``h, w, l`` metres; ``location``
    (K, 3) bottom centre ``x, y, z`` in the rectified camera frame; ``rotation_y`` (K,); ``score`` (K,) for
    detection results, else None. DontCare lines carry the devkit's placeholders (-1, -10, -1000).
    """

    type: list[str] = field(default_factory=list)
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0))
    occluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bbox: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    dimensions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    location: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rotation_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.type)

    def select(self, keep: np.ndarray) -> "KittiLabels":
        """The objects where the (K,) bool mask (or index array) ``keep`` selects them."""
        keep = np.asarray(keep)
        positions = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return KittiLabels(
            type=[self.type[i] for i in positions], truncated=self.truncated[positions],
            occluded=self.occluded[positions], alpha=self.alpha[positions], bbox=self.bbox[positions],
            dimensions=self.dimensions[positions], location=self.location[positions],
            rotation_y=self.rotation_y[positions], score=None if self.score is None else self.score[positions])

    @staticmethod
    def dont_care(bbox: np.ndarray) -> "KittiLabels":
        """DontCare regions for (K, 4) image boxes, with the devkit's placeholder values."""
        bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 4)
        count = len(bbox)
        return KittiLabels(type=["DontCare"] * count, truncated=np.full(count, -1.0),
                           occluded=np.full(count, -1, dtype=np.int64), alpha=np.full(count, -10.0), bbox=bbox,
                           dimensions=np.full((count, 3), -1.0), location=np.full((count, 3), -1000.0),
                           rotation_y=np.full(count, -10.0))

    @staticmethod
    def concatenate(parts: Sequence["KittiLabels"]) -> "KittiLabels":
        parts = [part for part in parts if len(part)]
        if not parts:
            return KittiLabels()
        scores = [part.score for part in parts]
        return KittiLabels(
            type=[name for part in parts for name in part.type],
            truncated=np.concatenate([p.truncated for p in parts]),
            occluded=np.concatenate([p.occluded for p in parts]),
            alpha=np.concatenate([p.alpha for p in parts]), bbox=np.concatenate([p.bbox for p in parts]),
            dimensions=np.concatenate([p.dimensions for p in parts]),
            location=np.concatenate([p.location for p in parts]),
            rotation_y=np.concatenate([p.rotation_y for p in parts]),
            score=None if any(s is None for s in scores) else np.concatenate(cast(list[np.ndarray], scores)))


def parse_kitti_labels(text: str, source: str = "label_2 text", scores: Optional[bool] = None) -> KittiLabels:
    """Parse ``label_2`` lines (15 fields, or 16 with a detection score).

    Parameters
    ----------
    text : the file's content; blank lines are skipped.
    source : named in error messages (the file's path).
    scores : True requires 16 fields a line (a result file), False 15 (ground truth); None accepts either, the
        same for every line. With ``scores=True`` an empty text gives an empty ``score`` array (not None).

    Raises
    ------
    DataError
        A line with another number of fields or a non-number; the message names ``source`` and the line.
    """
    rows: list[list[float]] = []
    names: list[str] = []
    scores_read: list[float] = []
    width: Optional[int] = None
    first = 0
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        allowed = (15, 16) if scores is None else ((16,) if scores else (15,))
        if len(fields) not in allowed or (width is not None and len(fields) != width):
            want = str(width) if width is not None else " or ".join(map(str, allowed))
            since = f" (as line {first})" if width is not None else ""
            raise DataError(f"{source} line {number}: {len(fields)} fields, expected {want}{since}: type truncated "
                            "occluded alpha left top right bottom h w l x y z rotation_y [score]")
        if width is None:
            width, first = len(fields), number
        try:
            values = [float(value) for value in fields[1:]]
        except ValueError:
            raise DataError(f"{source} line {number}: fields 2-{len(fields)} must be numbers: {line.strip()!r}") \
                from None
        names.append(fields[0])
        rows.append(values[:14])
        if len(fields) == 16:
            scores_read.append(values[14])
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 14)
    occluded = table[:, 1]
    if np.any(occluded != np.round(occluded)):
        raise DataError(f"{source}: occlusion levels must be integers, got {occluded[occluded != np.round(occluded)]}")
    with_scores = width == 16 or (width is None and bool(scores))
    return KittiLabels(type=names, truncated=table[:, 0], occluded=occluded.astype(np.int64),
                       alpha=table[:, 2], bbox=table[:, 3:7], dimensions=table[:, 7:10], location=table[:, 10:13],
                       rotation_y=table[:, 13],
                       score=np.asarray(scores_read, dtype=np.float64) if with_scores else None)


def read_kitti_labels(path: str | Path, scores: Optional[bool] = None) -> KittiLabels:
    """Read a ``label_2`` (or result) file (:func:`parse_kitti_labels`); a missing file raises ``DataError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read KITTI label file {path}: {error}") from None
    return parse_kitti_labels(text, str(path), scores)


def format_kitti_labels(labels: KittiLabels, decimals: int = 2) -> str:
    """``label_2`` text, one line per object, in the official field order.

    Numbers have ``decimals`` decimals (2, as the official ground truth), the occlusion level is an integer, and
    DontCare lines are written as the devkit writes them (``DontCare -1 -1 -10 l t r b -1 -1 -1 -1000 -1000 -1000
    -10``). A score is appended when ``labels.score`` is set (detection results).
    """
    lines = []
    for k, name in enumerate(labels.type):
        box = " ".join(f"{value:.{decimals}f}" for value in labels.bbox[k])
        if name == "DontCare":
            line = f"DontCare -1 -1 -10 {box} -1 -1 -1 -1000 -1000 -1000 -10"
        else:
            numbers = [*labels.dimensions[k], *labels.location[k], labels.rotation_y[k]]
            line = (f"{name} {labels.truncated[k]:.{decimals}f} {int(labels.occluded[k])} "
                    f"{labels.alpha[k]:.{decimals}f} {box} " + " ".join(f"{value:.{decimals}f}" for value in numbers))
        if labels.score is not None:
            line += f" {labels.score[k]:.4f}"
        if " " in name or not name:
            raise DataError(f"KITTI object type {name!r} must be one word")
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def write_kitti_labels(path: str | Path, labels: KittiLabels, decimals: int = 2) -> None:
    """Write a ``label_2`` file atomically (:func:`format_kitti_labels`); an empty file for no objects."""
    from slidr.utils.io import atomic_write_text

    atomic_write_text(Path(path), format_kitti_labels(labels, decimals))


def parse_kitti_calibration(text: str, source: str = "calib text") -> dict[str, np.ndarray]:
    """Parse a KITTI object ``calib`` file: ``KEY: numbers`` per line.

    Returns
    -------
    dict: ``P0``-``P3`` (3, 4), ``R0_rect`` (3, 3), ``Tr_velo_to_cam`` (3, 4), ``Tr_imu_to_velo`` (3, 4) where
    present; other keys as flat arrays.

    Raises
    ------
    DataError
        A non-number, a known key with the wrong count of numbers, or no ``P2`` / ``R0_rect`` / ``Tr_velo_to_cam``.
    """
    out: dict[str, np.ndarray] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, separator, numbers = line.partition(":")
        key = key.strip()
        try:
            if not separator:
                raise ValueError
            values = np.array([float(value) for value in numbers.split()], dtype=np.float64)
        except ValueError:
            raise DataError(f"{source} line {number}: expected 'KEY: numbers', got {line.strip()[:60]!r}") from None
        shape = _CALIBRATION_SHAPES.get(key)
        if shape is not None:
            if values.size != shape[0] * shape[1]:
                raise DataError(f"{source}: {key} has {values.size} numbers, expected {shape[0] * shape[1]}")
            values = values.reshape(shape)
        out[key] = values
    missing = [key for key in ("P2", "R0_rect", "Tr_velo_to_cam") if key not in out]
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)}")
    return out


def read_kitti_calibration(path: str | Path) -> dict[str, np.ndarray]:
    """Read a KITTI object ``calib`` file (:func:`parse_kitti_calibration`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read KITTI calibration file {path}: {error}") from None
    return parse_kitti_calibration(text, str(path))


def format_kitti_calibration(calibration: dict[str, np.ndarray]) -> str:
    """Calibration text in the official layout: ``P0``-``P3``, ``R0_rect``, ``Tr_velo_to_cam``,
    ``Tr_imu_to_velo`` (those present, in that order), numbers as ``%.12e``, and a closing empty line."""
    lines = [f"{key}: " + " ".join(f"{value:.12e}" for value in np.asarray(calibration[key], dtype=np.float64).ravel())
             for key in KITTI_CALIBRATION_KEYS if key in calibration]
    return "\n".join(lines) + "\n\n"
