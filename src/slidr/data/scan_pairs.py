"""Scan pairs for PointContrast and two views of a scan for DepthContrast.

PointContrast (SLidR's supplementary D): all pairs of keyframes of the same scene whose lidars are at least
``min_distance`` apart (closer pairs are dropped), registered with the ground-truth lidar poses
(``lidar_to_global``); a *match* is a point whose nearest neighbour in the other registered cloud is closer
than ``match_radius``; pairs with fewer than ``min_matches`` matches are dropped. Each view is then augmented
independently (rotation about z, flips, a dropped cuboid), voxelized, and the matches surviving the cuboid are
returned with the views.

DepthContrast: two independently augmented views of one scan, each voxelized (for the U-Net) and sub-sampled to
a fixed number of points (for the point network).

Randomness comes from numpy's global generator (seeded per sample by the trainer's ``SeededDataset``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset

from slidr.config import AugmentConfig, PretrainConfig
from slidr.data.augment import draw_cuboid_drop, rotate_flip_points
from slidr.data.index import DatasetIndex, check_index_dataset, load_index
from slidr.data.scans import load_scan
from slidr.data.voxelize import point_features, voxelize
from slidr.errors import DataError
from slidr.utils.io import write_json
from slidr.utils.log import logger
from slidr.utils.progress import progress

# --------------------------------------------------------------------------------------------------------------
# Pure geometry.
# --------------------------------------------------------------------------------------------------------------


def candidate_pairs(scenes: Sequence[str], positions: np.ndarray, min_distance: float) -> np.ndarray:
    """All pairs (i < j) of the same scene whose positions are at least ``min_distance`` apart.

    Parameters
    ----------
    scenes : (S,) scene name of each scan.
    positions : (S, 3) lidar position of each scan in a common (global) frame.
    min_distance : pairs closer than this are dropped.

    Returns
    -------
    (K, 2) int64 pairs of positions into the inputs, sorted.
    """
    positions = np.asarray(positions, np.float64)
    scene_of = np.asarray(scenes)
    pairs = []
    for scene in dict.fromkeys(scene_of.tolist()):
        members = np.flatnonzero(scene_of == scene)
        first, second = np.triu_indices(len(members), k=1)
        distance = np.linalg.norm(positions[members[first]] - positions[members[second]], axis=1)
        keep = distance >= min_distance
        pairs.append(np.stack([members[first[keep]], members[second[keep]]], axis=1))
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)


def match_points(points_a: np.ndarray, points_b: np.ndarray, a_to_b: np.ndarray, radius: float) -> np.ndarray:
    """Points of ``a`` whose nearest neighbour in ``b`` (after registration) is closer than ``radius``.

    Parameters
    ----------
    points_a : (Na, 3+) cloud a in its lidar frame.
    points_b : (Nb, 3+) cloud b in its lidar frame.
    a_to_b : (4, 4) rigid transform from a's frame to b's (``inv(lidar_to_global_b) @ lidar_to_global_a``).
    radius : match distance (m).

    Returns
    -------
    (M, 2) int64 ``[index in a, index of its nearest neighbour in b]``.
    """
    if len(points_a) == 0 or len(points_b) == 0:
        return np.zeros((0, 2), np.int64)
    xyz_a = np.asarray(points_a, np.float64)[:, :3] @ a_to_b[:3, :3].T + a_to_b[:3, 3]
    distance, nearest = cKDTree(np.asarray(points_b, np.float64)[:, :3]).query(xyz_a, distance_upper_bound=radius)
    matched = np.flatnonzero(distance < radius)
    return np.stack([matched, nearest[matched]], axis=1).astype(np.int64)


def relative_pose(lidar_to_global_a: np.ndarray, lidar_to_global_b: np.ndarray) -> np.ndarray:
    """(4, 4) transform taking points of lidar frame a into lidar frame b."""
    return np.linalg.inv(np.asarray(lidar_to_global_b, np.float64)) @ np.asarray(lidar_to_global_a, np.float64)


# --------------------------------------------------------------------------------------------------------------
# Views.
# --------------------------------------------------------------------------------------------------------------


def augmented_view(points: np.ndarray, cfg: PretrainConfig, tracked: np.ndarray, dataset: str
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Augment (rotation, flips, cuboid drop) and voxelize one view.

    Parameters
    ----------
    points : (N, 4) x, y, z, intensity.
    cfg : the run's config (``data.augment``, ``data.voxel``).
    tracked : (T,) indices of points whose survival matters (matches); the cuboid keeps at least
        ``min(augment.min_pairs, T)`` of them.
    dataset : ``"nuscenes"`` or ``"semantickitti"`` (input features, with ``cfg.data.point_features``).

    Returns
    -------
    view : ``points`` (N', 4), ``voxel_coords`` (V, 3) int32, ``voxel_feats`` (V, 1), ``inverse_map`` (N',).
    new_index : (N,) int64 position of each input point in the view, -1 where dropped.
    """
    augment: AugmentConfig = cfg.data.augment
    points = np.array(points, np.float32, copy=True)
    keep = np.ones(len(points), bool)
    if augment.enabled:
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        points[:, :3] = rotate_flip_points(points[:, :3], rng, augment.rotate_z, augment.flip_prob)
        if augment.drop_cuboid:
            # a view has no cameras: the cuboid rule counts the tracked points in all (augment.cuboid_rule's
            # "total"), up to augment.cuboid_tries draws
            keep, _ = draw_cuboid_drop(points[:, :3], tracked, rng, augment.cuboid_max_fraction,
                                       min(augment.min_pairs, len(tracked)), augment.cuboid_tries)
    new_index = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
    points = points[keep]
    voxel = cfg.data.voxel
    coords, kept_index, inverse_map = voxelize(points, voxel.mode, voxel.size, voxel.azimuth_step_deg)
    feats = point_features(points[kept_index], dataset, cfg.data.point_features)
    view = {"points": points, "voxel_coords": coords, "voxel_feats": feats, "inverse_map": inverse_map}
    return view, new_index


def collate_views(views: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Batch views like ``collate_pretrain``: coordinates get a batch column, inverse maps are offset.

    Returns
    -------
    ``voxel_coords`` (sum V, 4) int32 ``[batch, x, y, z]``, ``voxel_feats``, ``inverse_map`` (sum N,) into the
    batch's voxels, ``points``, ``point_batch``, ``point_offsets`` (B,) first point of each view.
    """
    coords, feats, inverse, points, point_batch, offsets = [], [], [], [], [], []
    voxel_offset = point_offset = 0
    for b, view in enumerate(views):
        c = torch.from_numpy(np.asarray(view["voxel_coords"], np.int32))
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        feats.append(torch.from_numpy(view["voxel_feats"]))
        inverse.append(torch.from_numpy(view["inverse_map"]) + voxel_offset)
        points.append(torch.from_numpy(view["points"]))
        point_batch.append(torch.full((len(view["points"]),), b, dtype=torch.long))
        offsets.append(point_offset)
        voxel_offset += len(c)
        point_offset += len(view["points"])
    return {"voxel_coords": torch.cat(coords), "voxel_feats": torch.cat(feats), "inverse_map": torch.cat(inverse),
            "points": torch.cat(points), "point_batch": torch.cat(point_batch),
            "point_offsets": torch.tensor(offsets, dtype=torch.long)}


# --------------------------------------------------------------------------------------------------------------
# Datasets.
# --------------------------------------------------------------------------------------------------------------


def _training_index(cfg: PretrainConfig) -> tuple[DatasetIndex, np.ndarray]:
    index = load_index(cfg.data.index)
    check_index_dataset(index, cfg.data.dataset)
    chosen = index.sample_indices(cfg.data.train_split)
    if len(chosen) == 0:
        raise DataError(f"index {cfg.data.index}: split {cfg.data.train_split!r} has no sample")
    return index, chosen


class PointContrastPairs(Dataset):
    """Pairs of keyframes of one scene with their matches (see the module docstring).

    The selection (which pairs have enough matches) reads every candidate pair once; it is cached in a JSON
    file (``pairs.cache``, default beside the index) keyed by the index file and the pair settings.

    Parameters
    ----------
    cfg : PretrainConfig
        ``data`` (index, split, voxels, augmentation) and ``pairs`` settings.

    Items: ``{"a": view, "b": view, "matches": (M, 2) int64 point indices into the two views}``.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.index, self.samples = _training_index(cfg)
        self.pairs = self._selected_pairs()
        if len(self.pairs) == 0:
            raise DataError(f"index {cfg.data.index}: no keyframe pair of split {cfg.data.train_split!r} is at "
                            f"least {cfg.pairs.min_distance} m apart with {cfg.pairs.min_matches} matches; "
                            "lower pairs.min_distance or pairs.min_matches")

    def __len__(self) -> int:
        return len(self.pairs)

    def _cloud(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.index.samples[int(position)]
        return load_scan(self.index, sample, with_labels=False).points, np.asarray(sample["lidar_to_global"])

    def _matches(self, first: int, second: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (points_a, pose_a), (points_b, pose_b) = self._cloud(first), self._cloud(second)
        matches = match_points(points_a, points_b, relative_pose(pose_a, pose_b), self.cfg.pairs.match_radius)
        return points_a, points_b, matches

    def _cache_path(self) -> Path:
        pairs = self.cfg.pairs
        if pairs.cache:
            return Path(pairs.cache)
        key = json.dumps([self.cfg.data.train_split, pairs.min_distance, pairs.min_matches, pairs.match_radius])
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return Path(self.cfg.data.index).with_name(f"pointcontrast_pairs_{digest}.json")

    def _selected_pairs(self) -> np.ndarray:
        pairs_cfg = self.cfg.pairs
        cache = self._cache_path()
        index_file = Path(self.cfg.data.index).resolve()
        stamp = {"index": str(index_file), "index_mtime": index_file.stat().st_mtime,
                 "split": self.cfg.data.train_split, "min_distance": pairs_cfg.min_distance,
                 "min_matches": pairs_cfg.min_matches, "match_radius": pairs_cfg.match_radius}
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("stamp") == stamp:
                return np.asarray(saved["pairs"], np.int64).reshape(-1, 2)
        scenes = [self.index.samples[int(i)]["scene"] for i in self.samples]
        positions = np.stack([np.asarray(self.index.samples[int(i)]["lidar_to_global"])[:3, 3]
                              for i in self.samples])
        candidates = self.samples[candidate_pairs(scenes, positions, pairs_cfg.min_distance)]
        kept = []
        for first, second in progress(candidates.tolist(), desc="PointContrast pairs", unit="pair"):
            if len(self._matches(first, second)[2]) >= pairs_cfg.min_matches:
                kept.append((first, second))
        logger.info("PointContrast: %d of %d candidate pairs have >= %d matches", len(kept), len(candidates),
                    pairs_cfg.min_matches)
        try:
            write_json(cache, {"stamp": stamp, "pairs": kept})
        except OSError as error:  # a read-only data folder: select again next time
            logger.warning("warning: cannot cache PointContrast pairs in %s: %s", cache, error)
        return np.asarray(kept, np.int64).reshape(-1, 2)

    def __getitem__(self, item: int) -> dict:
        first, second = self.pairs[item]
        points_a, points_b, matches = self._matches(int(first), int(second))
        view_a, index_a = augmented_view(points_a, self.cfg, matches[:, 0], self.index.format)
        view_b, index_b = augmented_view(points_b, self.cfg, matches[:, 1], self.index.format)
        moved = np.stack([index_a[matches[:, 0]], index_b[matches[:, 1]]], axis=1)
        return {"a": view_a, "b": view_b, "matches": moved[(moved >= 0).all(axis=1)]}


def collate_pairs(samples: Sequence[dict]) -> dict:
    """Batch PointContrast pairs: ``a`` and ``b`` (see :func:`collate_views`) and ``matches`` (M, 2) offset
    into the batch's points of each view; ``batch_size`` counts pairs."""
    a = collate_views([s["a"] for s in samples])
    b = collate_views([s["b"] for s in samples])
    offsets = torch.stack([a["point_offsets"], b["point_offsets"]], 1)
    matches = [torch.from_numpy(s["matches"]) + offsets[i] for i, s in enumerate(samples)]
    return {"a": a, "b": b, "matches": torch.cat(matches) if matches else torch.zeros((0, 2), dtype=torch.long),
            "batch_size": len(samples)}


class TwoViews(Dataset):
    """DepthContrast: two independently augmented views of each scan of the training split.

    Items: ``{"a": view, "b": view}``, each view also holding ``sampled_points`` (max_points, 4) x, y, z and
    scaled intensity: a random subset (with repetition when the view has fewer points) for the point network.

    Parameters
    ----------
    cfg : PretrainConfig
        ``data`` and ``pairs.max_points``.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.index, self.samples = _training_index(cfg)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> dict:
        sample = self.index.samples[int(self.samples[item])]
        points = load_scan(self.index, sample, with_labels=False).points
        views = {}
        for name in ("a", "b"):
            view, _ = augmented_view(points, self.cfg, np.zeros(0, np.int64), self.index.format)
            count = len(view["points"])
            if count == 0:
                raise DataError(f"{self.index.resolve(sample['lidar'])}: no point left in a DepthContrast view")
            wanted = self.cfg.pairs.max_points
            chosen = np.random.choice(count, wanted, replace=count < wanted)
            sampled = view["points"][chosen]
            features = point_features(sampled, self.index.format, self.cfg.data.point_features)
            view["sampled_points"] = np.concatenate([sampled[:, :3], features], 1)
            views[name] = view
        return views


def collate_two_views(samples: Sequence[dict]) -> dict:
    """Batch DepthContrast views: ``a``/``b`` as :func:`collate_views` plus ``sampled_points`` (B, Np, 4)."""
    out: dict = {"batch_size": len(samples)}
    for name in ("a", "b"):
        views = [s[name] for s in samples]
        out[name] = collate_views(views)
        out[name]["sampled_points"] = torch.from_numpy(np.stack([v["sampled_points"] for v in views]))
    return out
