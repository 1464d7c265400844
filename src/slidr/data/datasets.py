"""Datasets and batches: pretraining samples (points, voxels, images, pairings, superpixels) and downstream ones.

Samples are dicts of numpy arrays (docs/ARCHITECTURE.md, "Samples and batches"); ``collate_pretrain`` /
``collate_downstream`` turn lists of them into batches of torch tensors with the offsets that make indices
refer to the batch. Besides the documented keys, every sample has ``stats``: counters of what was degraded in
it (``cuboid_fallbacks``: the cuboid drop was given up and the scan kept whole; ``crop_fallbacks``: images resized
whole because no random crop kept enough pairs; ``nonfinite_points``: points dropped for NaN or infinite
coordinates). Batches sum them, so a trainer can log them.

Loading is arranged for speed (about 300 ms per nuScenes sample on one core in the authors' release, 5-6x less
here, measured side by side by ``slidr bench data``): all cameras are projected from one copy of the cloud, the
devkit's float32 chain running only on the points a composed transform says may be visible; every image's crop
is drawn from the pairings before any pixel is decoded, JPEGs are decoded at the largest DCT-scaling reduction
(1/2, 1/4, 1/8) that still gives the crop its output resolution, cropped and resized in one step and kept uint8
until the final normalisation; superpixel label files (row runs, :mod:`slidr.data.superpixels`) are evaluated only
at the crop's nearest-neighbour grid, so no label the crop discards is decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from slidr.config import DataConfig
from slidr.data.augment import (
    ImageTransform,
    augment_pairs,
    dct_reduction,
    normalize_images,
    rotate_flip_points,
    select_points,
    select_rows,
    source_indices,
    transform_image,
)
from slidr.data.index import DatasetIndex, check_index_dataset, load_index
from slidr.data.io import open_image
from slidr.data.projection import project_to_cameras
from slidr.data.scans import load_scan
from slidr.data.superpixels import (
    find_superpixel_file,
    open_labels,
    superpixel_dir,
    superpixel_path,
)
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


class CameraSubsetDataset(PretrainDataset):
    """Pretraining samples restricted ScaLR's way (valeoai/ScaLR): one camera per scan, the points it sees.

    Per sample, with the sample's random generator: one camera of ``data_cfg.cameras`` drawn uniformly (whether
    or not points project into it), and only its image decoded (``one_camera``); then only the points paired
    with a loaded image kept (``paired_points_only``: the 3D network sees the camera's frustum), then at most
    ``max_points`` of the points, drawn without replacement. The sample is the :class:`PretrainDataset` one
    with K = 1 camera (or all of them) and ``channels``: the camera channel of each of its images. With every
    option off it is exactly :class:`PretrainDataset`'s sample (plus ``channels``).

    Selecting points re-voxelizes the kept points (one more voxelization of a smaller cloud).

    Parameters
    ----------
    index, split, data_cfg, train
        As :class:`PretrainDataset`.
    one_camera : bool
        One random camera per scan (ScaLR) instead of all of ``data_cfg.cameras``.
    paired_points_only : bool
        Keep only the points paired with a pixel of a loaded image.
    max_points : int, optional
        Keep at most this many points (random subset); None: all.
    """

    def __init__(self, index: DatasetIndex | str | Path, split: Optional[str], data_cfg: DataConfig,
                 train: bool = True, one_camera: bool = True, paired_points_only: bool = True,
                 max_points: Optional[int] = None):
        super().__init__(index, split, data_cfg, train)
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        self.one_camera = one_camera
        self.paired_points_only = paired_points_only
        self.max_points = max_points

    def __getitem__(self, item: int) -> dict[str, Any]:
        rng = self._rng(item)
        cfg = self.cfg
        if self.one_camera:
            cfg = dataclasses.replace(cfg, cameras=[cfg.cameras[int(rng.integers(len(cfg.cameras)))]])
        out = load_pretrain_sample(self.index, self.sample(item), cfg, rng if self.train else None,
                                   self.superpixel_folder, self.superpixel_command)
        out["channels"] = list(cfg.cameras)
        keep = np.ones(len(out["points"]), bool)
        if self.paired_points_only:
            keep[:] = False
            keep[out["pairing_points"]] = True
        if self.max_points is not None and int(keep.sum()) > self.max_points:
            chosen = rng.choice(np.flatnonzero(keep), self.max_points, replace=False)
            keep[:] = False
            keep[chosen] = True
        if keep.all():
            return out
        out["pairing_points"], out["pairing_images"] = select_points(keep, out["pairing_points"],
                                                                     out["pairing_images"])
        out.update(_voxel_part(select_rows(out["points"], keep), self.index.format, cfg))
        out.pop("kept_index")
        if "labels" in out:
            out["labels"] = out["labels"][keep]
        return out


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
        ``superpixels``, ``normalize``, ``voxelize``): wall time under the stage's name, process CPU time under
        ``cpu:<stage>`` (steadier on a shared machine).

    Returns
    -------
    The sample dict of docs/ARCHITECTURE.md (plus ``stats``).
    """
    stage = StageTimer(timings)
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
        points = np.concatenate([result.xyz, select_rows(points[:, 3:4], result.keep_points)], axis=1)
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
            maps = np.empty((len(cameras), *out_hw), np.int64)
            for k, (channel, camera, transform, hw) in enumerate(zip(cfg.cameras, cameras, result.image_transforms,
                                                                     image_hws)):
                maps[k] = read_transformed_labels(superpixel_folder, channel, camera["image"], index.format,
                                                  transform, hw, out_hw, superpixel_command)
            out["superpixels"] = maps
    if scan.labels is not None:
        out["labels"] = scan.labels[result.keep_points]
    return out


def read_transformed_image(path: Path, transform: ImageTransform, image_hw: Sequence[int],
                           out_hw: Sequence[int]) -> np.ndarray:
    """Decode only what a crop needs and return it resized and flipped: (H_out, W_out, 3) uint8.

    RGB JPEGs are decoded at the largest DCT-scaling reduction that keeps the crop at or above the output
    resolution (:func:`~slidr.data.augment.dct_reduction`); other images (and crops that allow no reduction, e.g.
    the synthetic world's) are decoded in full. Either way the crop box is resized in one step (antialiased
    bilinear, :func:`~slidr.data.augment.transform_image`).

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
                wanted = dct_reduction(transform, out_hw)
                # floor sizes: Pillow reduces by the largest power of two <= size // requested size, here `wanted`
                drafted = image.draft("RGB", (image_hw[1] // wanted, image_hw[0] // wanted)) if wanted > 1 else None
                if drafted is not None:
                    reduction = image_hw[1] / drafted[1][2]  # Pillow's box: (0, 0, width / scale, height / scale)
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return transform_image(image, transform, out_hw, reduction)
    except OSError as error:
        raise DataError(f"image file {path} cannot be decoded: {error}") from None


def read_transformed_labels(folder: Path, channel: str, image: str, dataset_format: str, transform: ImageTransform,
                            image_hw: Sequence[int], out_hw: Sequence[int], superpixel_command: Any = None
                            ) -> np.ndarray:
    """The superpixel labels of one image at the output grid of its transform: (H_out, W_out) uint8 or uint16.

    Only the crop's sampled rows are decoded, at its sampled columns (nearest neighbour,
    :func:`~slidr.data.augment.source_indices`).

    Raises
    ------
    DataError
        The label file is missing (with the command that creates it), unreadable, or of another size than the
        image.
    """
    path = find_superpixel_file(folder, channel, image, dataset_format,
                                f"; recompute them with `{superpixel_command()}`" if superpixel_command else "")
    if path is None:
        hint = f"; create it with `{superpixel_command()}`" if superpixel_command else ""
        raise DataError(f"superpixel file {superpixel_path(folder, image)} does not exist{hint}")
    labels = open_labels(path)
    if labels.shape != tuple(image_hw):
        raise DataError(f"superpixel file {path} is {labels.shape[1]}x{labels.shape[0]} but its image {image} is "
                        f"{image_hw[1]}x{image_hw[0]}; recompute the superpixels")
    return labels.sample(*source_indices(transform, out_hw))


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


def _voxel_part(points: np.ndarray, dataset: str, cfg: DataConfig) -> dict[str, Any]:
    coords, kept_index, inverse_map = voxelize(points, cfg.voxel.mode, cfg.voxel.size, cfg.voxel.azimuth_step_deg)
    return {
        "points": np.ascontiguousarray(points, dtype=np.float32),
        "voxel_coords": coords,
        "voxel_feats": point_features(select_rows(points, kept_index), dataset, cfg.point_features),
        "inverse_map": inverse_map,
        "kept_index": kept_index,
    }


def _checked_cameras(sample: dict, channels: Sequence[str]) -> list[str]:
    absent = [channel for channel in channels if channel not in sample["cameras"]]
    if absent:
        raise DataError(f"sample {sample.get('token')} has no camera {absent[0]!r} (data.cameras); it has "
                        f"{', '.join(sample['cameras']) or 'none'}")
    return list(channels)


class StageTimer:
    """``with timer("name"):`` adds the block's wall time to ``timings["name"]`` and its process CPU time to
    ``timings["cpu:name"]`` (nothing when timings is None)."""

    def __init__(self, timings: Optional[dict[str, float]]):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.timings is None:
            yield
            return
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.timings[f"cpu:{name}"] = self.timings.get(f"cpu:{name}", 0.0) + time.process_time() - cpu_start


def _offsets(sizes: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _stats(**counts: int) -> dict[str, int]:
    return {key: int(counts.get(key, 0)) for key in STAT_KEYS}
