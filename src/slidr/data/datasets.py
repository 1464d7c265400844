"""Datasets and batches: pretraining samples (points, voxels, images, pairings, superpixels) and downstream ones.

Samples are dicts of numpy arrays (docs/ARCHITECTURE.md, "Samples and batches"); ``collate_pretrain`` /
``collate_downstream`` turn lists of them into batches of torch tensors with the offsets that make indices
refer to the batch. Besides the documented keys, every sample has ``stats``: counters of what was degraded in
it (``cuboid_fallbacks``: the cuboid drop was given up and the scan kept whole; ``crop_fallbacks``: images resized
whole because no random crop kept enough pairs; ``nonfinite_points``: points dropped for NaN or infinite
coordinates). Batches sum them, so a trainer can log them.

Loading is arranged for speed (about 300 ms per nuScenes sample on one core in the authors' release, a few tens
of ms here; ``slidr bench data``): all cameras are projected from one copy of the cloud; every image's crop is
drawn from the pairings before any pixel is decoded, JPEGs are decoded at the smallest DCT scale (1/2, 1/4,
1/8) that still gives the crop its output resolution, cropped and resized in one step and kept uint8 until
the final normalisation; superpixel label PNGs are decoded with one ``zlib`` call and sampled at the crop's
nearest-neighbour grid.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from slidr.config import DataConfig
from slidr.data.augment import (
    ImageTransform,
    augment_pairs,
    draft_size,
    normalize_images,
    rotate_flip_points,
    transform_image,
    transform_labels,
)
from slidr.data.index import DatasetIndex, check_index_dataset, load_index
from slidr.data.io import open_image
from slidr.data.projection import project_to_cameras
from slidr.data.scans import load_scan
from slidr.data.superpixels import read_label_png, superpixel_dir, superpixel_path
from slidr.data.voxelize import point_features, voxelize
from slidr.errors import DataError

STAT_KEYS = ("cuboid_fallbacks", "crop_fallbacks", "nonfinite_points")


class _ScanDataset(torch.utils.data.Dataset):
    """Shared part of the datasets: the index, the split's samples and the per-sample random generator."""

    def __init__(self, index: DatasetIndex | str | Path, split: Optional[str], data_cfg: DataConfig,
                 train: bool, label_fraction: float = 1.0):
        self.index = index if isinstance(index, DatasetIndex) else load_index(index)
        check_index_dataset(self.index, data_cfg.dataset)
        self.cfg = data_cfg
        self.train = train
        self.positions = self.index.sample_indices(split, label_fraction)
        if len(self.positions) == 0:
            raise DataError(f"index {self.index.path}: split {split!r} has no samples")

    def __len__(self) -> int:
        return len(self.positions)

    def sample(self, item: int) -> dict:
        """The index entry of dataset item ``item``."""
        return self.index.samples[int(self.positions[item])]

    def _rng(self, item: int) -> np.random.Generator:
        # A pure function of (torch seed, item), so that a resumed run replays the same draws. The trainers set
        # torch's seed per sample from (run seed, epoch, position) (slidr.engine.data.SeededDataset).
        return np.random.default_rng([torch.initial_seed(), item])


class PretrainDataset(_ScanDataset):
    """Pretraining samples: a scan with its camera images, point-pixel pairings and superpixels.

    Parameters
    ----------
    index : a loaded index or the path of an index file.
    split : a split name of the index (``None``: all samples).
    data_cfg : cameras, output image size, voxels, augmentations and superpixels.
    train : random augmentations (``data_cfg.augment``); False: none, every image resized whole.
    """

    def __init__(self, index: DatasetIndex | str | Path, split: Optional[str], data_cfg: DataConfig,
                 train: bool = True):
        super().__init__(index, split, data_cfg, train)
        cameras = self.sample(0).get("cameras") or {}
        absent = [channel for channel in data_cfg.cameras if channel not in cameras]
        if absent:
            what = "SemanticKITTI pretraining" if self.index.format == "semantickitti" else "pretraining"
            if not cameras:
                raise DataError(f"index {self.index.path}: {what} needs camera images, and its samples have none")
            raise DataError(
                f"index {self.index.path}: {what} needs the cameras data.cameras = {list(data_cfg.cameras)}, "
                f"but its samples have {', '.join(cameras)}; set data.cameras to cameras the index has "
                f"(e.g. data.cameras=[{', '.join(cameras)}])"
            )
        sp = data_cfg.superpixels
        self.superpixel_folder = None
        if sp.method != "none":
            self.superpixel_folder = superpixel_dir(self.index.path or data_cfg.index, sp.method, sp.n_segments,
                                                    sp.root, sp.source)
            if not self.superpixel_folder.is_dir():
                raise DataError(f"superpixel folder {self.superpixel_folder} does not exist; create it with "
                                f"`{self.superpixel_command()}`")

    def superpixel_command(self) -> str:
        """The command that computes the superpixels this dataset reads."""
        sp = self.cfg.superpixels
        command = f"slidr superpixels --index {self.index.path or self.cfg.index} --method {sp.method}"
        if sp.method == "masks":
            command += f" --from <folder of the mask files> --name {sp.source}"
        if sp.method == "slic" and sp.n_segments != 150:
            command += f" --n-segments {sp.n_segments}"
        if sp.root is not None:
            command += f" --root {sp.root}"
        return command

    def __getitem__(self, item: int) -> dict[str, Any]:
        return load_pretrain_sample(self.index, self.sample(item), self.cfg,
                                    self._rng(item) if self.train else None, self.superpixel_folder,
                                    self.superpixel_command)


class DownstreamDataset(_ScanDataset):
    """Labelled scans for semantic segmentation (voxels, labels of every original point, inverse map).

    Parameters
    ----------
    index : a loaded index or the path of an index file.
    split : a split name of the index (``None``: all samples).
    data_cfg : voxels, augmentations, label fraction (used for training only).
    train : training set: ``data_cfg.label_fraction`` of the split, and when ``data_cfg.augment.enabled`` a random
        rotation about z and flips (no cuboid drop: every point keeps its label).
    """

    def __init__(self, index: DatasetIndex | str | Path, split: Optional[str], data_cfg: DataConfig,
                 train: bool = False):
        super().__init__(index, split, data_cfg, train, data_cfg.label_fraction if train else 1.0)

    def __getitem__(self, item: int) -> dict[str, Any]:
        sample = self.sample(item)
        scan = load_scan(self.index, sample, with_labels=True)
        if scan.labels is None:
            raise DataError(f"sample {sample.get('token')} (lidar file {sample.get('lidar')}) has no label file; "
                            f"downstream training and evaluation need labelled samples")
        points = scan.points
        augment = self.cfg.augment
        if self.train and augment.enabled:
            points = points.copy()
            points[:, :3] = rotate_flip_points(points[:, :3], self._rng(item), augment.rotate_z, augment.flip_prob)
        out = _voxel_part(points, self.index.format, self.cfg)
        out.update(labels=scan.labels, voxel_labels=scan.labels[out.pop("kept_index")], token=sample["token"],
                   stats=_stats(nonfinite_points=scan.num_dropped))
        return out


def load_pretrain_sample(index: DatasetIndex, sample: dict, cfg: DataConfig, rng: Optional[np.random.Generator],
                         superpixel_folder: Optional[Path], superpixel_command: Any = None,
                         timings: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Read, pair, augment and voxelize one pretraining sample (the fast path; see the module docstring).

    Parameters
    ----------
    index : the loaded index.
    sample : one of ``index.samples``.
    cfg : data settings (cameras, image size, voxels, augmentations).
    rng : random generator of the augmentations; None: validation mode (no randomness).
    superpixel_folder : the method folder of the superpixel PNGs; None: no superpixels.
    superpixel_command : callable returning the command that creates missing superpixel files (for errors).
    timings : if given, seconds spent per stage are added to it (``read``, ``project``, ``augment``, ``decode``,
        ``superpixels``, ``normalize``, ``voxelize``).

    Returns
    -------
    The sample dict of docs/ARCHITECTURE.md (plus ``stats``).
    """
    stage = _StageTimer(timings)
    with stage("read"):
        scan = load_scan(index, sample, with_labels=True)
    points = scan.points
    cameras = [sample["cameras"][channel] for channel in _checked_cameras(sample, cfg.cameras)]
    image_hws = [(int(camera["height"]), int(camera["width"])) for camera in cameras]
    out_hw = tuple(cfg.image_size)
    with stage("project"):
        pairing_points, pairing_images = project_to_cameras(points, sample, cfg.cameras, allow_empty=False)
    with stage("augment"):
        result = augment_pairs(points[:, :3], pairing_points, pairing_images, image_hws, out_hw, cfg.augment,
                               rng if cfg.augment.enabled else None)
        points = np.concatenate([result.xyz, points[result.keep_points, 3:4]], axis=1)
    with stage("decode"):
        images = np.stack([read_transformed_image(index.resolve(camera["image"]), transform, hw, out_hw)
                           for camera, transform, hw in zip(cameras, result.image_transforms, image_hws)])
    with stage("normalize"):
        images = normalize_images(images)
    with stage("voxelize"):
        out = _voxel_part(points, index.format, cfg)
    out.pop("kept_index")
    out.update(
        images=images,
        pairing_points=result.pairing_points,
        pairing_images=result.pairing_images,
        token=sample["token"],
        stats=_stats(cuboid_fallbacks=int(result.cuboid_fell_back), crop_fallbacks=result.crops_fell_back,
                     nonfinite_points=scan.num_dropped),
    )
    if superpixel_folder is not None:
        with stage("superpixels"):
            maps = []
            for channel, camera, transform, hw in zip(cfg.cameras, cameras, result.image_transforms, image_hws):
                path = superpixel_path(superpixel_folder, channel, camera["image"])
                if not path.is_file():
                    hint = f"; create it with `{superpixel_command()}`" if superpixel_command else ""
                    raise DataError(f"superpixel file {path} does not exist{hint}")
                labels = read_label_png(path)
                if labels.shape != hw:
                    raise DataError(f"superpixel file {path} is {labels.shape[1]}x{labels.shape[0]} but its image "
                                    f"{camera['image']} is {hw[1]}x{hw[0]}; recompute the superpixels")
                maps.append(transform_labels(labels, transform, out_hw))
            out["superpixels"] = np.stack(maps).astype(np.int64)
    if scan.labels is not None:
        out["labels"] = scan.labels[result.keep_points]
    return out


def read_transformed_image(path: Path, transform: ImageTransform, image_hw: Sequence[int],
                           out_hw: Sequence[int]) -> np.ndarray:
    """Decode only what a crop needs and return it resized and flipped: (H_out, W_out, 3) uint8.

    JPEGs are decoded at the smallest DCT scale that keeps the crop at or above the output resolution.

    Raises
    ------
    DataError
        The file is missing, unreadable, or its size differs from ``image_hw`` (the index's size).
    """
    image = open_image(path)
    try:
        with image:
            if (image.height, image.width) != tuple(image_hw):
                raise DataError(f"image file {path} is {image.width}x{image.height} but the index says "
                                f"{image_hw[1]}x{image_hw[0]}")
            reduction = 1.0
            if image.format == "JPEG" and image.mode == "RGB":
                drafted = image.draft("RGB", draft_size(transform, image_hw, out_hw))
                if drafted is not None:
                    reduction = image_hw[1] / drafted[1][2]
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return transform_image(image, transform, out_hw, reduction)
    except OSError as error:
        raise DataError(f"image file {path} cannot be decoded: {error}") from None


def collate_pretrain(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch pretraining samples (docs/ARCHITECTURE.md): indices offset so that they refer to the batch.

    ``pairing_points`` index the batch's points, ``inverse_map`` the batch's voxels, ``pairing_images[:, 0]``
    the batch's images (``b * K + k``). ``superpixels`` and ``labels`` are present when every sample has them.
    """
    batch = _collate_voxels(samples)
    point_offsets = _offsets([len(sample["points"]) for sample in samples])
    pairing_images = []
    image_offset = 0
    for sample in samples:
        shifted = sample["pairing_images"].copy()
        shifted[:, 0] += image_offset
        pairing_images.append(shifted)
        image_offset += len(sample["images"])
    batch["pairing_points"] = torch.from_numpy(np.concatenate(
        [sample["pairing_points"] + offset for sample, offset in zip(samples, point_offsets)]))
    batch["pairing_images"] = torch.from_numpy(np.concatenate(pairing_images))
    batch["images"] = torch.from_numpy(np.concatenate([sample["images"] for sample in samples]))
    if all("superpixels" in sample for sample in samples):
        batch["superpixels"] = torch.from_numpy(np.concatenate([sample["superpixels"] for sample in samples]))
    if all("labels" in sample for sample in samples):
        batch["labels"] = torch.from_numpy(np.concatenate([sample["labels"] for sample in samples]))
    return batch


def collate_downstream(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch downstream samples: voxels and points as :func:`collate_pretrain`, plus ``labels`` and ``voxel_labels``."""
    batch = _collate_voxels(samples)
    batch["labels"] = torch.from_numpy(np.concatenate([sample["labels"] for sample in samples]))
    batch["voxel_labels"] = torch.from_numpy(np.concatenate([sample["voxel_labels"] for sample in samples]))
    return batch


def _collate_voxels(samples: Sequence[dict]) -> dict[str, Any]:
    voxel_offsets = _offsets([len(sample["voxel_coords"]) for sample in samples])
    coords = [np.concatenate([np.full((len(sample["voxel_coords"]), 1), b, np.int32), sample["voxel_coords"]], 1)
              for b, sample in enumerate(samples)]
    return {
        "voxel_coords": torch.from_numpy(np.concatenate(coords)),
        "voxel_feats": torch.from_numpy(np.concatenate([sample["voxel_feats"] for sample in samples])),
        "inverse_map": torch.from_numpy(np.concatenate(
            [sample["inverse_map"] + offset for sample, offset in zip(samples, voxel_offsets)])),
        "points": torch.from_numpy(np.concatenate([sample["points"] for sample in samples])),
        "point_batch": torch.from_numpy(np.concatenate(
            [np.full(len(sample["points"]), b, np.int64) for b, sample in enumerate(samples)])),
        "batch_size": len(samples),
        "tokens": [sample["token"] for sample in samples],
        "stats": {key: sum(sample.get("stats", {}).get(key, 0) for sample in samples) for key in STAT_KEYS},
        "sample_stats": [dict(sample.get("stats", {})) for sample in samples],  # per sample, in batch order
    }


def _voxel_part(points: np.ndarray, dataset: str, cfg: DataConfig) -> dict[str, np.ndarray]:
    coords, kept_index, inverse_map = voxelize(points, cfg.voxel.mode, cfg.voxel.size, cfg.voxel.azimuth_step_deg)
    return {
        "points": np.ascontiguousarray(points, dtype=np.float32),
        "voxel_coords": coords,
        "voxel_feats": point_features(points[kept_index], dataset),
        "inverse_map": inverse_map,
        "kept_index": kept_index,
    }


def _checked_cameras(sample: dict, channels: Sequence[str]) -> list[str]:
    absent = [channel for channel in channels if channel not in sample["cameras"]]
    if absent:
        raise DataError(f"sample {sample.get('token')} has no camera {absent[0]!r} (data.cameras); it has "
                        f"{', '.join(sample['cameras']) or 'none'}")
    return list(channels)


class _StageTimer:
    """``with timer("name"):`` adds the block's wall time to ``timings["name"]`` (nothing when timings is None)."""

    def __init__(self, timings: Optional[dict[str, float]]):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _offsets(sizes: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _stats(**counts: int) -> dict[str, int]:
    return {key: int(counts.get(key, 0)) for key in STAT_KEYS}
