"""Detection samples and batches: KITTI object frames as voxels, points, lidar boxes, calibration and ground truth.

A sample of :class:`DetectionDataset` (a ``kitti_object`` index, ``slidr prepare kitti-object``) is one frame:

- the voxel fields of the other datasets (:mod:`slidr.data.datasets`): ``points`` (N, 4) float32, ``voxel_coords``
  (V, 3) int32, ``voxel_feats`` (V, 1) float32 (reflectance in [0, 1]), ``inverse_map`` (N,) int64;
- ``boxes`` (K, 7) float64 velodyne-frame boxes ``[x, y, z, l, w, h, yaw]`` (:mod:`slidr.data.boxes`, every
  labelled object but DontCare), ``box_labels`` (K,) int64 class index into the detector's classes (-1: not a
  target, e.g. ``Van`` or ``Misc``), ``box_names`` (K,) the KITTI types;
- for evaluation: ``lidar_to_camera`` (4, 4) velodyne -> rectified camera 0 (``R0_rect @ Tr_velo_to_cam``, what
  KITTI label boxes are expressed in), ``projection`` (3, 4) ``P2``, ``image_size`` (width, height) of image_2,
  ``ground_truth`` the frame's ``label_2`` objects with DontCare regions (:class:`~slidr.data.boxes.KittiLabels`,
  the official fields: truncation and occlusion decide the difficulty);
- ``token``, ``item`` (the position in the dataset, which orders gathered evaluations), ``stats``.

Points. With ``crop_to_image`` only the points that project into image_2 are kept (OpenPCDet's
``FOV_POINTS_ONLY`` for KITTI: only what the camera sees is labelled). Boxes are not cropped: the evaluation
counts only what image_2 sees, and the targets of objects partly outside keep their whole box.

Augmentations (training only, :class:`~slidr.config.DetectionAugmentConfig`; OpenPCDet's KITTI recipe in its
order) move the boxes with the points, as pure functions (:func:`transform_scene`): a mirror across the x-z
plane (``y -> -y``, ``yaw -> -yaw``), a rotation by ``t`` about z (``yaw -> yaw + t``), a global scaling by ``s``
(centres and sizes). Every point inside a box before is inside the moved box after (a test checks it on real and
synthetic frames). No cuboid drop: it would cut objects.

Label fractions are the index's (:meth:`slidr.data.index.DatasetIndex.sample_indices`): every k-th frame of the
training split, ``k = round(1 / fraction)`` (5% -> 20, 10% -> 10, 20% -> 5), starting with the first. The
detection papers built on OpenPCDet draw such subsets as new ``ImageSets`` files of frame ids and do not publish
them; a fixed stride keeps the subsets nested (the 5% frames are in the 10% and 20% ones) and reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch

from slidr.config import DataConfig, DetectionAugmentConfig
from slidr.data.boxes import BOX_DIM, KittiLabels, as_boxes, kitti_velo_to_rect, wrap_angle
from slidr.data.datasets import _collate_voxels, _ScanDataset, _stats, _voxel_part
from slidr.data.index import DatasetIndex
from slidr.data.prepare_kitti_object import sample_boxes, sample_labels
from slidr.data.projection import project_points
from slidr.data.scans import load_scan
from slidr.errors import DataError

FOV_MIN_DEPTH = 0.0  # points in front of the camera plane (OpenPCDet keeps depth >= 0)


def class_indices(names: Sequence[str] | np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Class index of each object name in ``classes`` (case-insensitive), -1 for other names: (K,) -> (K,) int64."""
    lookup = {name.lower(): index for index, name in enumerate(classes)}
    return np.array([lookup.get(str(name).lower(), -1) for name in names], dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------
# Augmentations (pure)
# --------------------------------------------------------------------------------------------------------------
class SceneTransform(NamedTuple):
    """One draw of the detection augmentations: mirror ``y`` first, then rotate by ``angle`` (radians) about z,
    then scale by ``scale``."""

    flip: bool = False
    angle: float = 0.0
    scale: float = 1.0


def draw_scene_transform(rng: np.random.Generator, cfg: DetectionAugmentConfig) -> SceneTransform:
    """Random :class:`SceneTransform` of ``cfg`` (the identity when ``cfg.enabled`` is false)."""
    if not cfg.enabled:
        return SceneTransform()
    flip = bool(rng.random() < cfg.flip_prob)
    limit = math.radians(cfg.rotation_deg)
    angle = float(rng.uniform(-limit, limit)) if limit > 0 else 0.0
    low, high = cfg.scale_range
    scale = float(rng.uniform(low, high)) if high > low else float(low)
    return SceneTransform(flip, angle, scale)


def transform_scene(xyz: np.ndarray, boxes: np.ndarray, transform: SceneTransform) -> tuple[np.ndarray, np.ndarray]:
    """Apply one :class:`SceneTransform` to points and boxes alike.

    Parameters
    ----------
    xyz : (N, 3) point coordinates (z up).
    boxes : (K, 7) ``[x, y, z, l, w, h, yaw]`` in the same frame.
    transform : mirror ``y -> -y`` (``yaw -> -yaw``), rotation by ``angle`` about z (``yaw + angle``), scaling
        by ``scale`` (centres and sizes).

    Returns
    -------
    xyz (N, 3) float32, boxes (K, 7) float64 with yaw wrapped to [-pi, pi).
    """
    points = np.asarray(xyz, dtype=np.float64)[:, :3].copy()
    moved = as_boxes(boxes).copy()
    if transform.flip:
        points[:, 1] = -points[:, 1]
        moved[:, 1] = -moved[:, 1]
        moved[:, 6] = -moved[:, 6]
    if transform.angle:
        cos, sin = math.cos(transform.angle), math.sin(transform.angle)
        rotation = np.array([[cos, -sin], [sin, cos]])
        points[:, :2] = points[:, :2] @ rotation.T
        moved[:, :2] = moved[:, :2] @ rotation.T
        moved[:, 6] = moved[:, 6] + transform.angle
    if transform.scale != 1.0:
        points *= transform.scale
        moved[:, :6] *= transform.scale
    moved[:, 6] = wrap_angle(moved[:, 6])
    return points.astype(np.float32), moved


# --------------------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------------------
class FrameCalibration(NamedTuple):
    """What evaluation needs of a frame's calibration: ``lidar_to_camera`` (4, 4) velodyne -> rectified camera 0,
    ``projection`` (3, 4) ``P2``, ``image_size`` (width, height) of image_2."""

    lidar_to_camera: np.ndarray
    projection: np.ndarray
    image_size: tuple[int, int]


def frame_calibration(sample: dict, source: str = "") -> FrameCalibration:
    """The calibration of a ``kitti_object`` index sample.

    Raises
    ------
    DataError
        The frame has no calibration or no image_2 (a testing frame without calib, a partial download).
    """
    calibration = sample.get("calibration")
    camera = (sample.get("cameras") or {}).get("image_2")
    if calibration is None or camera is None:
        raise DataError(f"{source or 'index'}: frame {sample.get('token')} has no calibration or no image_2; "
                        f"detection needs both (training/calib and training/image_2)")
    velo_to_rect = kitti_velo_to_rect(calibration["R0_rect"], calibration["Tr_velo_to_cam"])
    return FrameCalibration(velo_to_rect, np.asarray(calibration["P2"], dtype=np.float64).reshape(3, 4),
                            (int(camera["width"]), int(camera["height"])))


def ground_truth_labels(sample: dict) -> KittiLabels:
    """A frame's ``label_2`` objects with its DontCare regions last (what the KITTI evaluation reads)."""
    dontcare = np.asarray((sample.get("dontcare") or {}).get("bbox", []), dtype=np.float64).reshape(-1, 4)
    return KittiLabels.concatenate([sample_labels(sample), KittiLabels.dont_care(dontcare)])


def image_points(points: np.ndarray, sample: dict) -> np.ndarray:
    """(M,) int64 indices of the points (N, 3+) that project into the sample's image_2 (increasing)."""
    camera = sample["cameras"]["image_2"]
    kept, _ = project_points(points, camera["lidar_to_camera"], camera["intrinsic"],
                             (int(camera["height"]), int(camera["width"])), min_depth=FOV_MIN_DEPTH)
    return kept


class DetectionDataset(_ScanDataset):
    """KITTI object frames for 3D detection (see the module docstring).

    Parameters
    ----------
    index : a loaded ``kitti_object`` index or its path.
    split : a split of the index (``None``: every frame).
    data_cfg : voxels, label fraction (training only), ``dataset`` (must be ``kitti_object``).
    classes : the detector's classes (``box_labels`` index them).
    train : training set: ``data_cfg.label_fraction`` of the split and the augmentations of ``augment``.
    augment : detection augmentations (training only; None: none).
    crop_to_image : keep only the points image_2 sees.
    """

    def __init__(self, index: DatasetIndex | str | Path, split: Optional[str], data_cfg: DataConfig,
                 classes: Sequence[str], train: bool = False, augment: Optional[DetectionAugmentConfig] = None,
                 crop_to_image: bool = True):
        super().__init__(index, split, data_cfg, train, data_cfg.label_fraction if train else 1.0)
        self.classes = list(classes)
        self.augment = augment if train else None
        self.crop_to_image = crop_to_image

    def __getitem__(self, item: int) -> dict[str, Any]:
        sample = self.sample(item)
        source = str(self.index.path or "index")
        calibration = frame_calibration(sample, source)
        scan = load_scan(self.index, sample, with_labels=False)
        points = scan.points
        if self.crop_to_image:
            points = points[image_points(points, sample)]
        names, boxes = sample_boxes(sample)
        if self.augment is not None and self.augment.enabled:
            xyz, boxes = transform_scene(points[:, :3], boxes, draw_scene_transform(self._rng(item), self.augment))
            points = np.concatenate([xyz, points[:, 3:4]], axis=1)
        out: dict[str, Any] = dict(_voxel_part(points, self.index.format, self.cfg))
        out.pop("kept_index")
        out.update(boxes=boxes.astype(np.float64).reshape(-1, BOX_DIM), box_labels=class_indices(names, self.classes),
                   box_names=names, lidar_to_camera=calibration.lidar_to_camera, projection=calibration.projection,
                   image_size=calibration.image_size, ground_truth=ground_truth_labels(sample), token=sample["token"],
                   item=int(item), stats=_stats(nonfinite_points=scan.num_dropped))
        return out


FRAME_KEYS = ("item", "token", "lidar_to_camera", "projection", "image_size", "ground_truth", "box_names")


def collate_detection(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch detection samples: the voxel fields as :func:`slidr.data.datasets.collate_downstream` (indices offset
    into the batch), ``boxes`` a list of (K_b, 7) float32 tensors, ``box_labels`` a list of (K_b,) int64 tensors,
    and ``frames`` a list of per-frame dicts (:data:`FRAME_KEYS`: calibration and ground truth for evaluation)."""
    batch = _collate_voxels(samples)
    batch["boxes"] = [torch.from_numpy(np.asarray(s["boxes"], dtype=np.float32).reshape(-1, BOX_DIM))
                      for s in samples]
    batch["box_labels"] = [torch.from_numpy(np.asarray(s["box_labels"], dtype=np.int64).reshape(-1))
                           for s in samples]
    batch["frames"] = [{key: s[key] for key in FRAME_KEYS} for s in samples]
    return batch
