"""KITTI 3D object detection evaluation: the official protocol, AP at 40 (or 11) recall positions.

This is slidr's own implementation of the rules of the KITTI devkit's ``evaluate_object.cpp`` (the version with
40 recall positions) for the 2D image box, bird's-eye-view (BEV) and 3D metrics, and AOS.

Conventions (the ``label_2`` files of KITTI, in the rectified camera frame of ``image_2``):

- One object per line: ``type truncated occluded alpha left top right bottom h w l x y z rotation_y [score]``.
  ``(x, y, z)`` is the centre of the box's **bottom** face in camera coordinates (x right, y **down**, z
  forward); the box spans ``y - h .. y`` vertically. ``(h, w, l)`` are height, width, length in metres.
  ``rotation_y`` turns the box about the camera's y axis: the length axis points along ``(cos ry, -sin ry)`` in
  the ``(x, z)`` plane (``ry = 0``: the car faces the camera's x axis; ``ry = -pi/2``: it drives away along z).
- Arrays of boxes (:meth:`KittiObjects.camera_boxes`) are ``(N, 7)`` ``[x, y, z, l, h, w, ry]``: the layout of
  OpenPCDet's ``boxes3d_kitti_camera`` and mmdet3d's ``CameraInstance3DBoxes``.
- Overlaps are computed as the devkit does: image IoU without the +1 pixel convention; BEV IoU of the rotated
  rectangles on the ``(x, z)`` plane; 3D IoU = BEV intersection area x overlap of the vertical extents / union
  of the volumes.

The protocol (per class, per difficulty, per metric):

- Difficulty: a ground-truth box counts when its 2D height is at least 40 / 25 / 25 px, its occlusion level at
  most 0 / 1 / 2 and its truncation at most 0.15 / 0.3 / 0.5 (easy / moderate / hard). Other boxes of the class
  are *ignored*: a detection matched to one is neither a true nor a false positive. A detection whose 2D box is
  less than the minimum height tall is ignored too (of any class: the devkit lets it absorb a ground truth).
- Neighbouring classes are ignored, not false negatives nor false positives: ``Van`` for ``Car``,
  ``Person_sitting`` for ``Pedestrian``. ``DontCare`` regions absorb the unmatched detections whose 2D box lies
  inside them by more than the class's overlap threshold (intersection over the detection's area; 2D metric
  and AOS only: DontCare regions have no 3D box).
- Matching: each ground truth in file order takes, among the unassigned detections overlapping it by more than
  the threshold (Car 0.7, Pedestrian 0.5, Cyclist 0.5 for every metric), the full-size detection of the class
  with the largest overlap, else the first small one.
- Score thresholds are chosen from the scores of the true positives so that recall steps through 0, 1/40, ...,
  1 (relative to the number of counted ground truths); precision is computed at each, made monotone
  (``p_i = max_{j >= i} p_j``), and AP|R40 is the mean of the 40 values at recall 1/40 .. 1 (AP|R11: the mean
  of the 11 values at 0, 0.1, .. 1), in percent. Threshold i fills sample point i whatever recall it reaches,
  so with fewer than 41 counted ground truths AP|R40 cannot reach 100 (:func:`max_reachable_ap`; ``notes`` in
  the result names such classes): evaluate on enough frames.

Files and geometry are :mod:`slidr.data.boxes`' (one reader and writer of ``label_2`` files, one set of lidar <->
camera conversions): :class:`KittiObjects` converts from and to its :class:`~slidr.data.boxes.KittiLabels`, files
are written in the official format (2 decimals, DontCare placeholders, the score last), and the 2D boxes of
detections (:func:`project_boxes_to_image`) are the extent of the part of the 3D box in front of the camera, cut at
the camera plane (the way the synthetic world's labels are made; for boxes wholly in front, the extent of the 8
projected corners, as OpenPCDet computes it). An earlier version clamped the depth of corners behind the camera
to 1 mm instead, which inflates the 2D box of a box crossing the camera plane to the image border.

Deliberate choices (documented here, checked in ``tests/test_detection_eval.py``):

- ``convention="devkit"`` (default) ignores a ground truth whose height is *below* the minimum, as the C++ devkit
  does; ``convention="openpcdet"`` ignores it when *at or below* the minimum, as the Python port used by
  OpenPCDet, mmdet3d and second.pytorch does (the only difference between the two: boxes exactly 25 or 40 px
  tall).
- A class with no counted ground truth at a difficulty has no AP: ``None`` (the devkit prints 0).
- Precision at a threshold where nothing is counted (``tp + fp = 0``, possible only when ignored boxes absorb
  every detection above it) is 0 (the devkit divides 0 by 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numba
import numpy as np

from slidr.config import ConfigError
from slidr.data import boxes as geometry
from slidr.errors import DataError, SlidrError

KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")
DIFFICULTIES = ("easy", "moderate", "hard")
METRICS = ("bbox", "bev", "3d", "aos")
MIN_HEIGHT = (40.0, 25.0, 25.0)  # px, easy / moderate / hard
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
# The official thresholds, the same for the 2D, BEV and 3D metrics (the devkit's MIN_OVERLAP); the other KITTI
# classes as the Python port lists them.
OFFICIAL_MIN_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5, "Van": 0.7, "Person_sitting": 0.5,
                        "Truck": 0.7}
NEIGHBOUR_CLASS = {"car": "van", "pedestrian": "person_sitting"}
DONTCARE = "dontcare"
NUM_SAMPLE_POINTS = 41  # recall 0, 1/40, .., 1
CONVENTIONS = ("devkit", "openpcdet")

# ignore states of ground truths and detections for one class and difficulty (the devkit's ignored_gt/ignored_det)
_COUNTED, _IGNORED, _UNRELATED = 0, 1, -1


# --------------------------------------------------------------------------------------------------------------
# Objects of one frame and label_2 files
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class KittiObjects:
    """The objects of one frame, ground truth or detections, in the ``label_2`` convention (module docstring).

    Attributes
    ----------
    names : (N,) str
        Object types as in the files (``Car``, ``Van``, ``DontCare``, ...); compared case-insensitively.
    truncated : (N,) float64
        Truncation in 0..1 (ground truth; detections' values are not used).
    occluded : (N,) int64
        Occlusion level 0..3 (ground truth; detections' values are not used).
    alpha : (N,) float64
        Observation angle in radians (-10 = not given); used by AOS only.
    bbox : (N, 4) float64
        2D box in ``image_2`` pixels: left, top, right, bottom. Detections need it too: its height decides
        whether a detection counts at a difficulty (:func:`project_boxes_to_image` computes it from the 3D box).
    dimensions : (N, 3) float64
        Height, width, length in metres (the file's order).
    location : (N, 3) float64
        Bottom-face centre in camera coordinates, metres.
    rotation_y : (N,) float64
        Yaw about the camera's y axis, radians.
    score : (N,) float64 or None
        Detection confidence (higher = more confident); ``None`` for ground truth.
    """

    names: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray
    dimensions: np.ndarray
    location: np.ndarray
    rotation_y: np.ndarray
    score: Optional[np.ndarray] = None
    source: str = field(default="<arrays>", compare=False)

    def __post_init__(self) -> None:
        names = np.array(self.names, dtype=str).reshape(-1)
        n = names.shape[0]
        object.__setattr__(self, "names", names)
        expected = {"truncated": (n,), "occluded": (n,), "alpha": (n,), "bbox": (n, 4), "dimensions": (n, 3),
                    "location": (n, 3), "rotation_y": (n,)}
        if self.score is not None:
            expected["score"] = (n,)
        for name, shape in expected.items():
            dtype = np.int64 if name == "occluded" else np.float64
            try:
                value = np.array(getattr(self, name), dtype=dtype)  # a copy: it is frozen below
            except (TypeError, ValueError):
                raise DataError(f"{self.source}: {name} is not numeric") from None
            if n == 0 and value.size == 0:
                value = value.reshape(shape)
            if value.shape != shape:
                raise DataError(f"{self.source}: {name} has shape {value.shape}, expected {shape} for {n} objects")
            if not np.all(np.isfinite(value)):
                raise DataError(f"{self.source}: {name} has non-finite values")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        names.setflags(write=False)
        inverted = (self.bbox[:, 2] < self.bbox[:, 0]) | (self.bbox[:, 3] < self.bbox[:, 1])
        if np.any(inverted):
            row = int(np.flatnonzero(inverted)[0])
            raise DataError(f"{self.source}: object {row} ({names[row]}) has a 2D box with right < left or "
                            f"bottom < top: {self.bbox[row].tolist()}")

    @classmethod
    def create(cls, names: Sequence[str] | np.ndarray, bbox: np.ndarray, dimensions: np.ndarray,
               location: np.ndarray, rotation_y: np.ndarray, score: Optional[np.ndarray] = None,
               truncated: Optional[np.ndarray] = None, occluded: Optional[np.ndarray] = None,
               alpha: Optional[np.ndarray] = None, source: str = "<arrays>") -> "KittiObjects":
        """Objects from arrays, with defaults for the fields detectors do not predict.

        ``truncated`` and ``occluded`` default to 0 (ground truth needs the real values: they decide the
        difficulty), ``alpha`` to the observation angle of the box (:func:`observation_angle`).
        """
        n = len(names)
        location = np.asarray(location, dtype=np.float64).reshape(n, 3) if n else np.zeros((0, 3))
        rotation_y = np.asarray(rotation_y, dtype=np.float64).reshape(n)
        return cls(names=np.asarray(names, dtype=str),
                   truncated=np.zeros(n) if truncated is None else truncated,
                   occluded=np.zeros(n, dtype=np.int64) if occluded is None else occluded,
                   alpha=observation_angle(location, rotation_y) if alpha is None else alpha,
                   bbox=np.asarray(bbox, dtype=np.float64).reshape(n, 4) if n else np.zeros((0, 4)),
                   dimensions=np.asarray(dimensions, dtype=np.float64).reshape(n, 3) if n else np.zeros((0, 3)),
                   location=location, rotation_y=rotation_y, score=score, source=source)

    @classmethod
    def empty(cls, with_score: bool = False) -> "KittiObjects":
        """No objects (a frame without labels, or without detections when ``with_score``)."""
        return cls.create([], np.zeros((0, 4)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0),
                          score=np.zeros(0) if with_score else None)

    def __len__(self) -> int:
        return int(self.names.shape[0])

    def camera_boxes(self) -> np.ndarray:
        """(N, 7) float64 ``[x, y, z, l, h, w, ry]``: bottom-centre location, length, height, width, yaw."""
        height, width, length = self.dimensions.T
        return np.column_stack([self.location, length, height, width, self.rotation_y]).reshape(len(self), 7)

    def select(self, mask: np.ndarray) -> "KittiObjects":
        """The objects where ``mask`` (N,) bool is true (or at the given indices)."""
        return KittiObjects(names=self.names[mask], truncated=self.truncated[mask], occluded=self.occluded[mask],
                            alpha=self.alpha[mask], bbox=self.bbox[mask], dimensions=self.dimensions[mask],
                            location=self.location[mask], rotation_y=self.rotation_y[mask],
                            score=None if self.score is None else self.score[mask], source=self.source)

    @classmethod
    def from_labels(cls, labels: geometry.KittiLabels, source: str = "<labels>") -> "KittiObjects":
        """The objects of a :class:`slidr.data.boxes.KittiLabels` (the data layer's ``label_2`` columns), checked."""
        return cls(names=np.asarray(labels.type, dtype=str), truncated=labels.truncated, occluded=labels.occluded,
                   alpha=labels.alpha, bbox=labels.bbox, dimensions=labels.dimensions, location=labels.location,
                   rotation_y=labels.rotation_y, score=labels.score, source=source)

    def to_labels(self) -> geometry.KittiLabels:
        """The same objects as :class:`slidr.data.boxes.KittiLabels` (what its file writer takes)."""
        return geometry.KittiLabels(
            type=[str(name) for name in self.names], truncated=self.truncated.copy(), occluded=self.occluded.copy(),
            alpha=self.alpha.copy(), bbox=self.bbox.copy(), dimensions=self.dimensions.copy(),
            location=self.location.copy(), rotation_y=self.rotation_y.copy(),
            score=None if self.score is None else self.score.copy())


def parse_kitti_objects(text: str, source: str = "<text>", scores: Optional[bool] = None) -> KittiObjects:
    """Objects of one ``label_2``-style file (15 fields a line) or result file (16: a score last).

    The reader of :func:`slidr.data.boxes.parse_kitti_labels`, as :class:`KittiObjects`.

    Parameters
    ----------
    text : the file's content; blank lines are skipped.
    source : named in error messages (the file's path).
    scores : True requires 16 fields a line, False 15; None accepts either, the same for every line.

    Raises
    ------
    DataError
        A line with another number of fields or a field that is not a number (the message names the line), a
        2D box with right < left or bottom < top.
    """
    return KittiObjects.from_labels(geometry.parse_kitti_labels(text, source, scores), source)


def format_kitti_objects(objects: KittiObjects, decimals: int = 2) -> str:
    """``label_2`` lines in the official format (:func:`slidr.data.boxes.format_kitti_labels`: ``decimals`` digits,
    2 as the benchmark's files; DontCare lines with the devkit's placeholders; the score last, 4 digits, when the
    objects have scores)."""
    return geometry.format_kitti_labels(objects.to_labels(), decimals)


def read_kitti_objects(path: str | Path, scores: Optional[bool] = None) -> KittiObjects:
    """Objects of one ``label_2`` or result file (:func:`parse_kitti_objects`); a missing file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    return KittiObjects.from_labels(geometry.read_kitti_labels(path, scores), str(path))


def write_kitti_objects(path: str | Path, objects: KittiObjects, decimals: int = 2) -> None:
    """Write one ``label_2`` / result file atomically (:func:`format_kitti_objects`)."""
    geometry.write_kitti_labels(path, objects.to_labels(), decimals)


def read_kitti_folder(folder: str | Path, frame_ids: Optional[Iterable[str]] = None,
                      scores: Optional[bool] = None) -> dict[str, KittiObjects]:
    """Frame id -> objects of a ``label_2`` or results folder (``<id>.txt`` files).

    ``frame_ids`` (e.g. the lines of ``ImageSets/val.txt``) selects and orders the frames; every one must have a
    file (an empty file is a frame without objects), as the devkit requires. Without it, every ``*.txt``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    if frame_ids is None:
        ids = sorted(p.stem for p in folder.glob("*.txt"))
    else:
        ids = [str(i).strip() for i in frame_ids if str(i).strip()]
    missing = [i for i in ids if not (folder / f"{i}.txt").is_file()]
    if missing:
        raise DataError(f"{folder} has no file for {len(missing)} of {len(ids)} frames (first: {missing[0]}.txt)")
    return {i: read_kitti_objects(folder / f"{i}.txt", scores=scores) for i in ids}


# --------------------------------------------------------------------------------------------------------------
# Geometry: camera boxes (N, 7) [x, y, z, l, h, w, ry]; the conversions are slidr.data.boxes'
# --------------------------------------------------------------------------------------------------------------
observation_angle = geometry.observation_angle


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of the boxes' footprints on the ``(x, z)`` plane, counter-clockwise (x first).

    ``boxes`` (N, 7) ``[x, y, z, l, h, w, ry]`` -> (N, 4, 2) ``(x, z)``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    u = np.array([0.5, 0.5, -0.5, -0.5])[None] * boxes[:, 3:4]   # along the length
    v = np.array([-0.5, 0.5, 0.5, -0.5])[None] * boxes[:, 5:6]   # along the width
    cos, sin = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + cos * u + sin * v
    z = boxes[:, 2:3] - sin * u + cos * v
    return np.stack([x, z], axis=-1)


def lidar_to_camera_boxes(lidar_boxes: np.ndarray, lidar_to_camera: np.ndarray) -> np.ndarray:
    """Lidar-frame boxes to KITTI camera boxes (the exact inverse of :func:`camera_to_lidar_boxes`).

    :func:`slidr.data.boxes.lidar_to_kitti_camera` in the camera-box layout.

    Parameters
    ----------
    lidar_boxes : (N, 7) ``[x, y, z, dx, dy, dz, yaw]`` in the lidar frame: the box's **centre**, its size along
        its heading (length), across it (width) and vertically (height), and the heading's angle from the lidar's x
        axis towards its y axis (OpenPCDet's convention; KITTI's velodyne: x forward, y left, z up).
    lidar_to_camera : (4, 4) lidar -> rectified camera transform; for KITTI ``R0_rect @ Tr_velo_to_cam`` (both
        padded to 4x4).

    Returns
    -------
    (N, 7) ``[x, y, z, l, h, w, ry]``: the bottom-face centre (the centre lowered by ``dz / 2`` along the lidar's
    z axis, as OpenPCDet does) moved into the camera frame; ``ry`` the direction of the heading moved into the
    camera frame, wrapped to [-pi, pi). With KITTI's calibration ``ry = -yaw - pi/2`` up to the calibration's
    rotation about the vertical (~0.01 rad), which OpenPCDet's formula leaves out: convert labels with
    :func:`camera_to_lidar_boxes` and predictions back with this function so that the two agree exactly.
    """
    location, dimensions, rotation_y = geometry.lidar_to_kitti_camera(
        np.asarray(lidar_boxes, dtype=np.float64).reshape(-1, 7), _transform(lidar_to_camera))
    return np.column_stack([location, dimensions[:, 2], dimensions[:, 0], dimensions[:, 1], rotation_y])


def camera_to_lidar_boxes(camera_boxes: np.ndarray, lidar_to_camera: np.ndarray) -> np.ndarray:
    """KITTI camera boxes (N, 7) ``[x, y, z, l, h, w, ry]`` to lidar boxes (N, 7) ``[x, y, z, dx, dy, dz, yaw]``.

    The exact inverse of :func:`lidar_to_camera_boxes` (:func:`slidr.data.boxes.kitti_camera_to_lidar`): the
    bottom centre moved into the lidar frame and raised by ``h / 2`` along the lidar's z axis; ``yaw`` the
    lidar-horizontal heading whose image in the camera frame points along ``(cos ry, -sin ry)`` on the ``(x, z)``
    plane.
    """
    camera_boxes = np.asarray(camera_boxes, dtype=np.float64).reshape(-1, 7)
    return geometry.kitti_camera_to_lidar(camera_boxes[:, :3], camera_boxes[:, [4, 5, 3]], camera_boxes[:, 6],
                                       _transform(lidar_to_camera))


def _transform(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise SlidrError(f"lidar_to_camera has shape {matrix.shape}, expected (4, 4)")
    return matrix


def project_boxes_to_image(camera_boxes: np.ndarray, projection: np.ndarray,
                           image_size: Optional[tuple[int, int]] = None, near: float = 0.1) -> np.ndarray:
    """2D boxes of camera boxes: the extent of their visible part in the image, clipped to the image.

    :func:`slidr.data.boxes.project_boxes_to_image` of the boxes' corners: parts of a box closer than ``near`` to
    the camera plane are cut off first (the 2D extent of what is in front, as the synthetic world's labels are
    made). For boxes wholly in front this is the extent of the 8 projected corners.

    Parameters
    ----------
    camera_boxes : (N, 7) ``[x, y, z, l, h, w, ry]`` camera boxes.
    projection : (3, 4) camera matrix (KITTI's ``P2`` for ``image_2``).
    image_size : (width, height) to clip to (``[0, width - 1] x [0, height - 1]``, as OpenPCDet); None: no clip.
    near : depth of the clipping plane, metres.

    Returns
    -------
    (N, 4) float64 ``left, top, right, bottom`` (all 0 for boxes wholly behind the plane).
    """
    projection = np.asarray(projection, dtype=np.float64)
    if projection.shape != (3, 4):
        raise SlidrError(f"projection has shape {projection.shape}, expected (3, 4)")
    camera_boxes = np.asarray(camera_boxes, dtype=np.float64).reshape(-1, 7)
    corners = geometry.kitti_camera_corners(camera_boxes[:, :3], camera_boxes[:, [4, 5, 3]], camera_boxes[:, 6])
    image_hw = None if image_size is None else (image_size[1], image_size[0])
    return geometry.project_boxes_to_image(corners, projection, image_hw, near).clipped


@numba.njit(cache=True)
def _image_overlap(a: np.ndarray, b: np.ndarray, of_first: bool) -> float:
    """Overlap of two ``left, top, right, bottom`` boxes: IoU, or intersection / area of ``a`` (``of_first``)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    if of_first:
        return inter / area_a
    return inter / (area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@numba.njit(cache=True)
def _footprint(box: np.ndarray, out: np.ndarray) -> None:
    """Counter-clockwise ``(x, z)`` corners of a camera box ``[x, y, z, l, h, w, ry]`` into ``out`` (4, 2)."""
    cos, sin = math.cos(box[6]), math.sin(box[6])
    half_l, half_w = box[3] / 2, box[5] / 2
    us = (half_l, half_l, -half_l, -half_l)
    vs = (-half_w, half_w, half_w, -half_w)
    for k in range(4):
        out[k, 0] = box[0] + cos * us[k] + sin * vs[k]
        out[k, 1] = box[2] - sin * us[k] + cos * vs[k]


@numba.njit(cache=True)
def _footprint_intersection(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two boxes' footprints: rectangle ``a`` clipped by the four edges of ``b``.

    Both are convex and counter-clockwise, so clipping by each edge's inner half-plane in turn (Sutherland-
    Hodgman) is exact; every clip adds at most one vertex, so 4 + 4 vertices suffice. Rounding on edges shared
    by both boxes can add a few near-duplicate vertices: 64 are allocated, and running out raises.
    """
    if a[3] <= 0 or a[5] <= 0 or b[3] <= 0 or b[5] <= 0:
        return 0.0
    reach_a = math.hypot(a[3], a[5]) / 2
    reach_b = math.hypot(b[3], b[5]) / 2
    if math.hypot(a[0] - b[0], a[2] - b[2]) >= reach_a + reach_b:
        return 0.0
    clip = np.empty((4, 2))
    _footprint(b, clip)
    capacity = 64
    polygon = np.empty((capacity, 2))
    scratch = np.empty((capacity, 2))
    corners = np.empty((4, 2))
    _footprint(a, corners)
    count = 4
    for k in range(4):
        polygon[k] = corners[k]
    for e in range(4):
        if 2 * count > capacity:
            raise ValueError("footprint clipping produced too many vertices")
        px, pz = clip[e, 0], clip[e, 1]
        ex, ez = clip[(e + 1) % 4, 0] - px, clip[(e + 1) % 4, 1] - pz
        kept = 0
        for k in range(count):
            cx, cz = polygon[k, 0], polygon[k, 1]
            previous = k - 1 if k > 0 else count - 1
            qx, qz = polygon[previous, 0], polygon[previous, 1]
            side_c = ex * (cz - pz) - ez * (cx - px)  # >= 0: on the inner (left) side of the edge
            side_q = ex * (qz - pz) - ez * (qx - px)
            if side_c >= 0:
                if side_q < 0:
                    t = side_q / (side_q - side_c)
                    scratch[kept, 0] = qx + t * (cx - qx)
                    scratch[kept, 1] = qz + t * (cz - qz)
                    kept += 1
                scratch[kept, 0] = cx
                scratch[kept, 1] = cz
                kept += 1
            elif side_q >= 0:
                t = side_q / (side_q - side_c)
                scratch[kept, 0] = qx + t * (cx - qx)
                scratch[kept, 1] = qz + t * (cz - qz)
                kept += 1
        count = kept
        if count < 3:
            return 0.0
        for k in range(count):
            polygon[k] = scratch[k]
    twice_area = 0.0
    for k in range(count):
        previous = k - 1 if k > 0 else count - 1
        twice_area += polygon[previous, 0] * polygon[k, 1] - polygon[k, 0] * polygon[previous, 1]
    return max(twice_area / 2, 0.0)


@numba.njit(cache=True)
def _box_overlap(kind: int, a: np.ndarray, b: np.ndarray) -> float:
    """IoU of camera boxes: kind 1 = BEV, kind 2 = 3D."""
    inter = _footprint_intersection(a, b)
    if inter <= 0:
        return 0.0
    if kind == 1:
        return inter / (a[3] * a[5] + b[3] * b[5] - inter)
    # vertical extents: the boxes span y - h .. y (camera y points down)
    height = min(a[1], b[1]) - max(a[1] - a[4], b[1] - b[4])
    if height <= 0:
        return 0.0
    inter *= height
    return inter / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter)


@numba.njit(cache=True)
def _pairwise(kind: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) overlaps: kind 0 = image IoU, 3 = image intersection over ``a``'s area, 1 = BEV IoU, 2 = 3D IoU."""
    result = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            if kind == 0 or kind == 3:
                result[i, j] = _image_overlap(a[i], b[j], kind == 3)
            else:
                result[i, j] = _box_overlap(kind, a[i], b[j])
    return result


@numba.njit(cache=True)
def _frame_overlaps(kind: int, det_boxes: np.ndarray, gt_boxes: np.ndarray, det_start: np.ndarray,
                    gt_start: np.ndarray, pair_start: np.ndarray) -> np.ndarray:
    """Detection x ground-truth overlaps of every frame, frame f's (D_f, G_f) block flat from ``pair_start[f]``."""
    result = np.zeros(pair_start[-1])
    for f in range(det_start.shape[0] - 1):
        n_gt = gt_start[f + 1] - gt_start[f]
        for d in range(det_start[f], det_start[f + 1]):
            row = pair_start[f] + (d - det_start[f]) * n_gt
            for g in range(n_gt):
                if kind == 0:
                    result[row + g] = _image_overlap(det_boxes[d], gt_boxes[gt_start[f] + g], False)
                else:
                    result[row + g] = _box_overlap(kind, det_boxes[d], gt_boxes[gt_start[f] + g])
    return result


def _check_boxes(boxes: np.ndarray, width: int, name: str) -> np.ndarray:
    # a writeable contiguous copy: numba compiles another version of every kernel for read-only arrays
    boxes = np.array(boxes, dtype=np.float64, order="C", copy=True)
    if boxes.ndim != 2 or boxes.shape[1] != width:
        raise SlidrError(f"{name} has shape {boxes.shape}, expected (N, {width})")
    return boxes


def image_box_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray, criterion: str = "iou") -> np.ndarray:
    """Overlaps of 2D boxes ``left, top, right, bottom``: (N, 4), (M, 4) -> (N, M).

    ``criterion="iou"``: intersection over union; ``"a"``: intersection over the area of the box of
    ``boxes_a`` (how the devkit measures a detection inside a DontCare region). Boxes that only touch: 0.
    """
    if criterion not in ("iou", "a"):
        raise SlidrError(f"criterion must be 'iou' or 'a', got {criterion!r}")
    return _pairwise(0 if criterion == "iou" else 3, _check_boxes(boxes_a, 4, "boxes_a"),
                     _check_boxes(boxes_b, 4, "boxes_b"))


def bev_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Bird's-eye-view IoU of camera boxes on the ``(x, z)`` plane: (N, 7), (M, 7) ``[x, y, z, l, h, w, ry]``
    -> (N, M). Boxes with a non-positive length or width overlap nothing."""
    return _pairwise(1, _check_boxes(boxes_a, 7, "boxes_a"), _check_boxes(boxes_b, 7, "boxes_b"))


def lidar_bev_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Bird's-eye-view IoU of lidar boxes on the ``(x, y)`` plane: (N, 7), (M, 7) ``[x, y, z, dx, dy, dz, yaw]``
    (the layout of :func:`lidar_to_camera_boxes`) -> (N, M).

    The mirror image ``(x, -y)`` of a footprint with length ``dx`` along ``(cos yaw, sin yaw)`` and width ``dy``
    is the footprint of the camera box ``[x, 0, -y, dx, 1, dy, yaw]`` on the ``(x, z)`` plane; mirroring both
    boxes keeps their areas and their intersection, so :func:`bev_overlap` measures it.
    """
    def mirrored(boxes: np.ndarray, name: str) -> np.ndarray:
        boxes = _check_boxes(boxes, 7, name)
        return np.column_stack([boxes[:, 0], np.zeros(len(boxes)), -boxes[:, 1], boxes[:, 3], np.ones(len(boxes)),
                                boxes[:, 4], boxes[:, 6]])

    return _pairwise(1, mirrored(boxes_a, "boxes_a"), mirrored(boxes_b, "boxes_b"))


def box3d_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """3D IoU of camera boxes: (N, 7), (M, 7) ``[x, y, z, l, h, w, ry]`` -> (N, M); each box spans ``y - h .. y``."""
    return _pairwise(2, _check_boxes(boxes_a, 7, "boxes_a"), _check_boxes(boxes_b, 7, "boxes_b"))


# --------------------------------------------------------------------------------------------------------------
# Matching and counting (numba): frames are concatenated, frame f owning rows start[f]..start[f+1]
# --------------------------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _match_frame(overlaps: np.ndarray, pair0: int, d0: int, n_det: int, g0: int, n_gt: int,
                 gt_state: np.ndarray, det_state: np.ndarray, scores: np.ndarray, min_overlap: float,
                 threshold: float, by_score: bool, assigned: np.ndarray, outcome: np.ndarray) -> None:
    """Greedy assignment of one frame's detections to its ground truths, in ground-truth order.

    Fills ``assigned[:n_det]`` (the detection took a ground truth, counted or ignored) and ``outcome[:n_gt]``:
    ``d + 1`` when ground truth g is a true positive of detection d, -1 when it is a counted ground truth left
    unmatched (a false negative), 0 otherwise. Detections scoring below ``threshold`` do not take part.
    ``by_score``: each ground truth takes the highest-scoring candidate (how the devkit collects the scores of
    true positives); otherwise the candidate with the largest overlap, full-size detections before small ones.
    """
    for d in range(n_det):
        assigned[d] = False
    for g in range(n_gt):
        outcome[g] = 0
        if gt_state[g0 + g] == _UNRELATED:
            continue
        best = -1
        best_value = -np.inf
        best_is_small = False
        for d in range(n_det):
            state = det_state[d0 + d]
            if state == _UNRELATED or assigned[d] or scores[d0 + d] < threshold:
                continue
            overlap = overlaps[pair0 + d * n_gt + g]
            if not overlap > min_overlap:
                continue
            if by_score:
                if scores[d0 + d] > best_value:
                    best, best_value = d, scores[d0 + d]
            elif state == _COUNTED:
                if best < 0 or best_is_small or overlap > best_value:
                    best, best_value, best_is_small = d, overlap, False
            elif best < 0:
                best, best_is_small = d, True
        if best < 0:
            if gt_state[g0 + g] == _COUNTED:
                outcome[g] = -1
        else:
            assigned[best] = True
            if gt_state[g0 + g] == _COUNTED and det_state[d0 + best] == _COUNTED:
                outcome[g] = best + 1


@numba.njit(cache=True)
def _true_positive_scores(overlaps: np.ndarray, pair_start: np.ndarray, det_start: np.ndarray,
                          gt_start: np.ndarray, gt_state: np.ndarray, det_state: np.ndarray, scores: np.ndarray,
                          min_overlap: float) -> np.ndarray:
    """Scores of the true positives when every detection takes part (matching by score)."""
    result = np.empty(gt_state.shape[0])
    found = 0
    max_det = max(1, np.max(det_start[1:] - det_start[:-1]))
    max_gt = max(1, np.max(gt_start[1:] - gt_start[:-1]))
    assigned = np.zeros(max_det, np.bool_)
    outcome = np.zeros(max_gt, np.int64)
    for f in range(det_start.shape[0] - 1):
        d0, g0 = det_start[f], gt_start[f]
        n_det, n_gt = det_start[f + 1] - d0, gt_start[f + 1] - g0
        _match_frame(overlaps, pair_start[f], d0, n_det, g0, n_gt, gt_state, det_state, scores, min_overlap,
                     -np.inf, True, assigned, outcome)
        for g in range(n_gt):
            if outcome[g] > 0:
                result[found] = scores[d0 + outcome[g] - 1]
                found += 1
    return result[:found]


@numba.njit(cache=True)
def _counts_at_thresholds(overlaps: np.ndarray, pair_start: np.ndarray, det_start: np.ndarray,
                          gt_start: np.ndarray, gt_state: np.ndarray, det_state: np.ndarray, scores: np.ndarray,
                          in_dontcare: np.ndarray, gt_alpha: np.ndarray, det_alpha: np.ndarray,
                          min_overlap: float, thresholds: np.ndarray) -> np.ndarray:
    """(T, 4) sums over frames of true positives, false positives, false negatives and orientation similarity.

    At each threshold: detections below it leave; the rest are matched by overlap; a full-size detection of the
    class left unmatched is a false positive unless ``in_dontcare`` (its largest overlap with the frame's DontCare
    regions, intersection over its area) exceeds ``min_overlap``. Similarity: ``(1 + cos(alpha_gt - alpha_det)) / 2``
    summed over the true positives.
    """
    counts = np.zeros((thresholds.shape[0], 4))
    max_det = max(1, np.max(det_start[1:] - det_start[:-1]))
    max_gt = max(1, np.max(gt_start[1:] - gt_start[:-1]))
    assigned = np.zeros(max_det, np.bool_)
    outcome = np.zeros(max_gt, np.int64)
    for f in range(det_start.shape[0] - 1):
        d0, g0 = det_start[f], gt_start[f]
        n_det, n_gt = det_start[f + 1] - d0, gt_start[f + 1] - g0
        relevant = False
        for d in range(n_det):
            relevant = relevant or det_state[d0 + d] != _UNRELATED
        for g in range(n_gt):
            relevant = relevant or gt_state[g0 + g] == _COUNTED
        if not relevant:
            continue
        for t in range(thresholds.shape[0]):
            _match_frame(overlaps, pair_start[f], d0, n_det, g0, n_gt, gt_state, det_state, scores, min_overlap,
                         thresholds[t], False, assigned, outcome)
            for g in range(n_gt):
                if outcome[g] > 0:
                    counts[t, 0] += 1
                    delta = gt_alpha[g0 + g] - det_alpha[d0 + outcome[g] - 1]
                    counts[t, 3] += (1.0 + math.cos(delta)) / 2.0
                elif outcome[g] < 0:
                    counts[t, 2] += 1
            for d in range(n_det):
                if (det_state[d0 + d] == _COUNTED and not assigned[d] and scores[d0 + d] >= thresholds[t]
                        and not in_dontcare[d0 + d] > min_overlap):
                    counts[t, 1] += 1
    return counts


def score_thresholds(true_positive_scores: np.ndarray, num_gt: int,
                     num_sample_points: int = NUM_SAMPLE_POINTS) -> np.ndarray:
    """Scores at which recall passes the sample points 0, 1/(S-1), .., 1 (the devkit's ``getThresholds``).

    Walking the true positives' scores from the highest, a score is kept when its recall ``(i + 1) / num_gt``
    is at least as close to the next sample point as the following score's recall; the last score is always
    kept. The sample point advances by ``1 / (S - 1)`` per kept score, accumulated as the devkit does so that
    ties are broken the same way. ``true_positive_scores`` (K,) -> (T,) descending, T <= S.
    """
    scores = np.sort(np.asarray(true_positive_scores, dtype=np.float64))[::-1]
    kept: list[float] = []
    target = 0.0
    last = len(scores) - 1
    for i, score in enumerate(scores):
        recall_here = (i + 1) / num_gt
        recall_next = (i + 2) / num_gt if i < last else recall_here
        if i < last and (recall_next - target) < (target - recall_here):
            continue
        kept.append(float(score))
        target += 1 / (num_sample_points - 1.0)
    return np.array(kept, dtype=np.float64)


def average_precision(precision: np.ndarray, recall_positions: int = 40) -> float:
    """AP in percent from the (41,) monotone precision at the sample points: R40 averages points 1..40 (recall
    1/40 .. 1), R11 the points 0, 4, .., 40 (recall 0, 0.1, .., 1)."""
    precision = np.asarray(precision, dtype=np.float64)
    if precision.shape != (NUM_SAMPLE_POINTS,):
        raise SlidrError(f"precision has shape {precision.shape}, expected ({NUM_SAMPLE_POINTS},)")
    if recall_positions == 40:
        return float(precision[1:].sum() / 40 * 100)
    if recall_positions == 11:
        return float(precision[::4].sum() / 11 * 100)
    raise ConfigError(f"recall_positions must be 40 or 11, got {recall_positions}")


# --------------------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Frames:
    """Ground truths and detections of every frame, concatenated (frame f: rows ``start[f]:start[f + 1]``)."""

    gt_names: np.ndarray
    gt_bbox: np.ndarray
    gt_boxes: np.ndarray
    gt_truncated: np.ndarray
    gt_occluded: np.ndarray
    gt_alpha: np.ndarray
    gt_start: np.ndarray
    det_names: np.ndarray
    det_bbox: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_alpha: np.ndarray
    det_start: np.ndarray
    pair_start: np.ndarray


def _concatenate(gt_frames: Sequence[KittiObjects], det_frames: Sequence[KittiObjects]) -> _Frames:
    if len(gt_frames) != len(det_frames):
        raise SlidrError(f"{len(gt_frames)} ground-truth frames but {len(det_frames)} detection frames; give one "
                         "(possibly empty) detection set per frame, in the same order")
    if not gt_frames:
        raise SlidrError("no frame to evaluate")
    for i, frame in enumerate(det_frames):
        if frame.score is None and len(frame):
            raise SlidrError(f"detection frame {i} ({frame.source}) has no scores")

    def stack(frames: Sequence[KittiObjects], name: str, width: int) -> np.ndarray:
        parts = [getattr(f, name) for f in frames]
        return np.concatenate(parts).reshape(-1, width) if width else np.concatenate(parts)

    def start(frames: Sequence[KittiObjects]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)

    gt_start, det_start = start(gt_frames), start(det_frames)
    pairs = np.diff(gt_start) * np.diff(det_start)
    return _Frames(
        gt_names=np.char.lower(np.concatenate([f.names for f in gt_frames]).astype(str)),
        gt_bbox=stack(gt_frames, "bbox", 4), gt_boxes=np.concatenate([f.camera_boxes() for f in gt_frames]),
        gt_truncated=stack(gt_frames, "truncated", 0), gt_occluded=stack(gt_frames, "occluded", 0),
        gt_alpha=stack(gt_frames, "alpha", 0), gt_start=gt_start,
        det_names=np.char.lower(np.concatenate([f.names for f in det_frames]).astype(str)),
        det_bbox=stack(det_frames, "bbox", 4), det_boxes=np.concatenate([f.camera_boxes() for f in det_frames]),
        det_scores=np.concatenate([np.zeros(0) if f.score is None else f.score for f in det_frames]),
        det_alpha=stack(det_frames, "alpha", 0), det_start=det_start,
        pair_start=np.concatenate([[0], np.cumsum(pairs)]).astype(np.int64))


def ignore_states(names: np.ndarray, bbox: np.ndarray, truncated: np.ndarray, occluded: np.ndarray,
                  class_name: str, difficulty: int, convention: str = "devkit") -> np.ndarray:
    """How each ground truth counts for one class and difficulty: 0 counted, 1 ignored, -1 another class.

    ``names`` (N,) lower-case types, ``bbox`` (N, 4), ``truncated`` (N,), ``occluded`` (N,) -> (N,) int8.
    A box of the class is ignored when it is too occluded, too truncated or too small for the difficulty; a box
    of the neighbouring class (Van for Car, Person_sitting for Pedestrian) is always ignored.
    """
    names = np.asarray(names)
    target = class_name.lower()
    height = bbox[:, 3] - bbox[:, 1]
    too_small = height <= MIN_HEIGHT[difficulty] if convention == "openpcdet" else height < MIN_HEIGHT[difficulty]
    too_hard = (occluded > MAX_OCCLUSION[difficulty]) | (truncated > MAX_TRUNCATION[difficulty]) | too_small
    states = np.full(names.shape[0], _UNRELATED, dtype=np.int8)
    states[names == NEIGHBOUR_CLASS.get(target, "\0")] = _IGNORED
    of_class = names == target
    states[of_class & too_hard] = _IGNORED
    states[of_class & ~too_hard] = _COUNTED
    return states


def detection_states(names: np.ndarray, bbox: np.ndarray, class_name: str, difficulty: int) -> np.ndarray:
    """How each detection counts: 1 ignored (2D box shorter than the difficulty's minimum height, any class),
    0 counted (of the class), -1 another class. ``names`` (N,) lower-case, ``bbox`` (N, 4) -> (N,) int8."""
    names = np.asarray(names)
    states = np.where(names == class_name.lower(), _COUNTED, _UNRELATED).astype(np.int8)
    # the devkit truncates the height to an integer before comparing it with an integer minimum: the same test
    states[np.abs(bbox[:, 3] - bbox[:, 1]) < MIN_HEIGHT[difficulty]] = _IGNORED
    return states


def _resolve_min_overlaps(classes: Sequence[str], metrics: Sequence[str],
                          min_overlaps: Optional[Mapping[str, float | Mapping[str, float]]]) -> dict:
    resolved: dict[str, dict[str, float]] = {}
    for name in classes:
        given = (min_overlaps or {}).get(name)
        if given is None:
            official = {k.lower(): v for k, v in OFFICIAL_MIN_OVERLAP.items()}.get(name.lower())
            if official is None:
                raise ConfigError(f"no official overlap threshold for class {name!r}; give min_overlaps[{name!r}]")
            given = official
        per_metric = dict(given) if isinstance(given, Mapping) else {m: float(given) for m in metrics}
        if "aos" in metrics and "aos" not in per_metric and "bbox" in per_metric:
            per_metric["aos"] = per_metric["bbox"]
        for metric in metrics:
            if metric not in per_metric:
                raise ConfigError(f"min_overlaps[{name!r}] has no threshold for metric {metric!r}")
            if not 0.0 <= float(per_metric[metric]) < 1.0:
                raise ConfigError(f"min_overlaps[{name!r}][{metric!r}] = {per_metric[metric]} is not in [0, 1)")
        resolved[name] = {m: float(per_metric[m]) for m in metrics}
    return resolved


def kitti_ap(gt_frames: Sequence[KittiObjects], det_frames: Sequence[KittiObjects],
             classes: Sequence[str] = KITTI_CLASSES, metrics: Sequence[str] = ("bbox", "bev", "3d"),
             recall_positions: int = 40, min_overlaps: Optional[Mapping[str, float | Mapping[str, float]]] = None,
             convention: str = "devkit") -> dict:
    """The official KITTI object detection evaluation of a set of frames.

    Parameters
    ----------
    gt_frames : one :class:`KittiObjects` per frame (``label_2``), with truncation, occlusion and 2D boxes.
    det_frames : the detections of the same frames in the same order, with scores and 2D boxes.
    classes : evaluated classes (the KITTI type names; ``Van``, ``Person_sitting``, ``Truck`` also have
        official thresholds).
    metrics : any of ``bbox`` (2D image boxes), ``bev``, ``3d``, ``aos`` (orientation similarity on the 2D
        matching; needs the detections' ``alpha``).
    recall_positions : 40 (AP|R40, the benchmark's metric since 2019) or 11 (AP|R11, older papers).
    min_overlaps : class -> threshold for every metric, or class -> {metric: threshold}; default the official
        ones (Car 0.7, Pedestrian 0.5, Cyclist 0.5 for the 2D, BEV and 3D metrics).
    convention : ``devkit`` or ``openpcdet`` (module docstring: ground truths exactly at the minimum height).

    Returns
    -------
    dict (JSON-ready), AP values in percent, ``None`` where a class has no counted ground truth:
        ``ap[metric][class][difficulty]``, ``map[metric][difficulty]`` (mean over the classes with an AP),
        ``map_moderate[metric]``, ``num_gt[class][difficulty]`` (counted ground truths),
        ``num_detections[class]``, ``precision[metric][class][difficulty]`` (the 41 monotone precisions at
        recall 0, 1/40, .., 1), ``notes`` (classes with too few ground truths for the sampling, see
        :func:`max_reachable_ap`), and the settings: ``classes``, ``difficulties``, ``metrics``,
        ``recall_positions``, ``min_overlaps``, ``convention``, ``num_frames``.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"metrics must be among {METRICS}, got {metrics}")
    if recall_positions not in (40, 11):
        raise ConfigError(f"recall_positions must be 40 or 11, got {recall_positions}")
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    classes = list(classes)
    thresholds_by_class = _resolve_min_overlaps(classes, metrics, min_overlaps)
    frames = _concatenate(gt_frames, det_frames)
    if len(frames.det_bbox) and np.all(frames.det_bbox[:, 3] - frames.det_bbox[:, 1] <= 0):
        raise SlidrError("no detection has a 2D box: the protocol ignores detections shorter than 25 px in the "
                         "image; fill bbox (project_boxes_to_image of the 3D boxes with P2)")
    evaluated = np.isin(frames.det_names, [c.lower() for c in classes])
    if "aos" in metrics and np.any(frames.det_alpha[evaluated] == -10):
        raise SlidrError("metric 'aos' needs the detections' alpha, but some are -10 (not given)")

    kinds = {"bbox": 0, "aos": 0, "bev": 1, "3d": 2}
    overlap_cache: dict[int, np.ndarray] = {}
    for metric in metrics:
        kind = kinds[metric]
        if kind not in overlap_cache:
            det_boxes, gt_boxes = (frames.det_bbox, frames.gt_bbox) if kind == 0 else (frames.det_boxes,
                                                                                        frames.gt_boxes)
            overlap_cache[kind] = _frame_overlaps(kind, det_boxes, gt_boxes, frames.det_start, frames.gt_start,
                                                  frames.pair_start)
    in_dontcare_2d = _dontcare_overlaps(frames)
    no_dontcare = np.zeros(len(frames.det_scores))

    result: dict = {"classes": classes, "difficulties": list(DIFFICULTIES), "metrics": metrics,
                    "recall_positions": recall_positions, "min_overlaps": thresholds_by_class,
                    "convention": convention, "num_frames": len(gt_frames),
                    "ap": {m: {c: {} for c in classes} for m in metrics},
                    "precision": {m: {c: {} for c in classes} for m in metrics},
                    "num_gt": {c: {} for c in classes},
                    "num_detections": {c: int(np.sum(frames.det_names == c.lower())) for c in classes}}
    for name in classes:
        for level, difficulty in enumerate(DIFFICULTIES):
            gt_state = ignore_states(frames.gt_names, frames.gt_bbox, frames.gt_truncated, frames.gt_occluded,
                                     name, level, convention)
            det_state = detection_states(frames.det_names, frames.det_bbox, name, level)
            num_gt = int(np.sum(gt_state == _COUNTED))
            result["num_gt"][name][difficulty] = num_gt
            for metric in metrics:
                min_overlap = thresholds_by_class[name][metric]
                overlaps = overlap_cache[kinds[metric]]
                precision = np.zeros(NUM_SAMPLE_POINTS)
                if num_gt > 0:
                    scores = _true_positive_scores(overlaps, frames.pair_start, frames.det_start, frames.gt_start,
                                                   gt_state, det_state, frames.det_scores, min_overlap)
                    thresholds = score_thresholds(scores, num_gt)
                    counts = _counts_at_thresholds(
                        overlaps, frames.pair_start, frames.det_start, frames.gt_start, gt_state, det_state,
                        frames.det_scores, in_dontcare_2d if kinds[metric] == 0 else no_dontcare,
                        frames.gt_alpha, frames.det_alpha, min_overlap, thresholds)
                    detected = counts[:, 0] + counts[:, 1]
                    numerator = counts[:, 3] if metric == "aos" else counts[:, 0]
                    precision[:len(thresholds)] = np.divide(numerator, detected, out=np.zeros(len(thresholds)),
                                                            where=detected > 0)
                    precision = np.maximum.accumulate(precision[::-1])[::-1]
                result["precision"][metric][name][difficulty] = precision.tolist()
                result["ap"][metric][name][difficulty] = (average_precision(precision, recall_positions)
                                                          if num_gt > 0 else None)
    result["map"] = {m: {d: _mean([result["ap"][m][c][d] for c in classes]) for d in DIFFICULTIES}
                     for m in metrics}
    result["map_moderate"] = {m: result["map"][m]["moderate"] for m in metrics}
    result["notes"] = _small_sample_notes(result)
    return result


def max_reachable_ap(num_gt: int, recall_positions: int = 40) -> float:
    """The largest AP the official sampling can give with ``num_gt`` counted ground truths (a perfect detector).

    At most one score threshold is kept per true positive, and threshold i fills sample point i; with fewer than
    41 ground truths the points beyond the last threshold keep precision 0 (10 perfectly detected objects give
    AP|R40 = 22.5).
    """
    filled = min(num_gt, NUM_SAMPLE_POINTS)
    if recall_positions == 40:
        return 100.0 * max(filled - 1, 0) / 40
    return 100.0 * len(range(0, filled, 4)) / 11


def _small_sample_notes(result: Mapping) -> list[str]:
    notes = []
    for name in result["classes"]:
        for difficulty in result["difficulties"]:
            num_gt = result["num_gt"][name][difficulty]
            if 0 < num_gt < NUM_SAMPLE_POINTS:
                cap = max_reachable_ap(num_gt, result["recall_positions"])
                notes.append(f"{name} {difficulty}: {num_gt} counted ground truths; with fewer than "
                             f"{NUM_SAMPLE_POINTS} the official recall sampling caps AP|R{result['recall_positions']} "
                             f"at {cap:.1f}")
    return notes


def _dontcare_overlaps(frames: _Frames) -> np.ndarray:
    """(D,) largest intersection-over-detection-area of each detection's 2D box with its frame's DontCare boxes."""
    result = np.zeros(len(frames.det_scores))
    is_dontcare = frames.gt_names == DONTCARE
    if not np.any(is_dontcare):
        return result
    for f in np.unique(np.searchsorted(frames.gt_start, np.flatnonzero(is_dontcare), side="right") - 1):
        g0, g1 = frames.gt_start[f], frames.gt_start[f + 1]
        d0, d1 = frames.det_start[f], frames.det_start[f + 1]
        if d1 > d0:
            regions = frames.gt_bbox[g0:g1][is_dontcare[g0:g1]]
            result[d0:d1] = image_box_overlap(frames.det_bbox[d0:d1], regions, criterion="a").max(axis=1)
    return result


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def format_ap_table(result: Mapping, metric: str = "3d") -> str:
    """Plain-text table of one metric of a :func:`kitti_ap` result: a row per class, easy / moderate / hard."""
    if metric not in result["ap"]:
        raise SlidrError(f"the evaluation has no metric {metric!r} (it has {list(result['ap'])})")
    header = f"{metric} AP|R{result['recall_positions']}"
    lines = [f"{header:<24}" + "".join(f"{d:>10}" for d in result["difficulties"])]
    rows = [(c, result["ap"][metric][c]) for c in result["classes"]] + [("mean", result["map"][metric])]
    for name, values in rows:
        cells = "".join(f"{'n/a' if values[d] is None else format(values[d], '.2f'):>10}"
                        for d in result["difficulties"])
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines) + "\n"
