"""``slidr bench data``: per-stage time of loading one pretraining sample, against the authors' loading path.

On the real nuScenes keyframe (1600x900 images; its SLIC superpixels are computed into a temporary folder first),
each repetition loads the sample twice with the same random draws:

- slidr's path (:func:`slidr.data.datasets.load_pretrain_sample`);
- a re-implementation of the authors' release: per camera a deep copy of the point cloud moved through the
  devkit's transform chain (``LidarPointCloud.rotate`` / ``translate``, ``view_points``), every image decoded
  in full and converted to float before cropping, superpixel maps read in full with Pillow, crops and resizes
  on float tensors (bilinear / nearest interpolation).

Both must give identical pairings (checked every repetition); the speed-up is their measured ratio. Besides wall
times per stage, the process CPU time per sample is reported: on a shared machine it stays near what one idle
core would take. Images
differ slightly (antialiased resize of a DCT-scaled decode vs. plain bilinear of the full image): the mean
absolute difference is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from slidr.bench import BenchResult
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import ConfigBase, at_least, setting, subkey
from slidr.errors import SlidrError

NAME = "data"
HELP = "time the stages of loading a pretraining sample (real nuScenes keyframe) vs. the authors' loading path"
STAGES = ("read", "project", "augment", "decode", "normalize", "superpixels", "voxelize")


@dataclass(frozen=True)
class DataBenchConfig(ConfigBase):
    """``slidr bench data``: which keyframe is loaded, how often, on how many threads."""

    dataroot: Optional[str] = setting(
        None, help="nuScenes dataroot to index (default: the real keyframe <realdata>/nuscenes-keyframe)")
    index: Optional[str] = setting(None, help="use this index and its SLIC superpixels instead of preparing --dataroot")
    repeats: int = setting(10, help="loads per path")
    threads: int = setting(1, help="torch threads (default 1: one core)")
    reference: bool = setting(True, help="also time the authors' loading path")

    def validate(self, where: str) -> None:
        at_least(self.repeats, 1, subkey(where, "repeats"))
        at_least(self.threads, 1, subkey(where, "threads"))


SETTINGS = CommandSettings(DataBenchConfig, flags=[
    Flag("dataroot"), Flag("index"), Flag("repeats"), Flag("threads"),
    Flag("reference", option="--no-reference", negate=True, help="skip the authors' path")])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from slidr.config import DataConfig

    cfg: DataBenchConfig = args.settings
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="slidr-bench-data-") as tmp:
        index_path = Path(cfg.index) if cfg.index else _prepare_keyframe(cfg.dataroot, Path(tmp))
        data_cfg = DataConfig(index=str(index_path))
        return _measure(index_path, data_cfg, cfg.repeats, cfg.reference)


def _prepare_keyframe(dataroot: str | None, tmp: Path) -> Path:
    from slidr.bench.superpixels import default_realdata
    from slidr.data.index import load_index
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.data.superpixels import compute_index_superpixels, image_jobs, superpixel_dir

    root = Path(dataroot) if dataroot else default_realdata() / "nuscenes-keyframe"
    if not (root / "v1.0-mini").is_dir():
        raise SlidrError(f"nuScenes keyframe not found at {root} (expected {root}/v1.0-mini); pass --dataroot "
                         f"or --index")
    index_path = tmp / "index.npz"
    prepare_nuscenes(root, "v1.0-mini", index_path)
    index = load_index(index_path)
    compute_index_superpixels(image_jobs(index.samples, index.root), superpixel_dir(index_path), "slic",
                              workers=2, show_progress=False)
    return index_path


def _measure(index_path: Path, cfg, repeats: int, reference: bool) -> BenchResult:
    from slidr.data.datasets import load_pretrain_sample
    from slidr.data.index import load_index
    from slidr.data.superpixels import superpixel_dir

    index = load_index(index_path)
    sample = index.samples[0]
    folder = superpixel_dir(index_path)
    fast_totals, fast_stages, slow_totals, slow_stages = [], [], [], []
    fast_cpu, slow_cpu = [], []  # process CPU time: what one core spends, whatever else runs on the machine
    identical = True
    image_differences, superpixel_agreement = [], []
    for repeat in range(repeats + 1):  # the first load of each path warms caches and is not counted
        timings: dict[str, float] = {}
        start, cpu_start = time.perf_counter(), time.process_time()
        fast = load_pretrain_sample(index, sample, cfg, np.random.default_rng(repeat), folder, timings=timings)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if repeat:
            fast_totals.append(elapsed)
            fast_cpu.append(cpu)
            fast_stages.append(timings)
        if not reference:
            continue
        timings = {}
        start, cpu_start = time.perf_counter(), time.process_time()
        slow = authors_load_sample(index, sample, cfg, np.random.default_rng(repeat), folder, timings)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if repeat:
            slow_totals.append(elapsed)
            slow_cpu.append(cpu)
            slow_stages.append(timings)
        identical &= np.array_equal(fast["pairing_points"], slow["pairing_points"])
        identical &= np.array_equal(fast["pairing_images"], slow["pairing_images"])
        image_differences.append(float(np.abs(fast["images"] - slow["images"]).mean()))
        superpixel_agreement.append(float((fast["superpixels"] == slow["superpixels"]).mean()))

    fast_ms = _median_ms(fast_totals)
    data = {"ms_per_sample": fast_ms, "cpu_ms_per_sample": _median_ms(fast_cpu), "points": int(len(fast["points"])), "pairs": int(len(fast["pairing_points"])),
            "cameras": len(cfg.cameras), "image_size": list(cfg.image_size), "repeats": repeats}
    rows = []
    for stage in STAGES:
        value = _median_ms([t.get(stage, 0.0) for t in fast_stages])
        data[f"{stage}_ms"] = value
        row = {"stage": stage, "slidr_ms": value}
        if reference:
            row["authors_ms"] = _median_ms([t.get(stage, 0.0) for t in slow_stages])
        rows.append(row)
    total = {"stage": "total", "slidr_ms": fast_ms}
    cpu_total = {"stage": "total (CPU time)", "slidr_ms": data["cpu_ms_per_sample"]}
    notes = []
    if reference:
        slow_ms = _median_ms(slow_totals)
        total["authors_ms"] = slow_ms
        cpu_total["authors_ms"] = _median_ms(slow_cpu)
        data["authors_path"] = {"ms_per_sample": slow_ms, "cpu_ms_per_sample": cpu_total["authors_ms"],
                                **{f"{stage}_ms": row["authors_ms"] for stage, row in zip(STAGES, rows)}}
        data["speedup"] = round(slow_ms / fast_ms, 2)
        data["pairings_identical"] = bool(identical)
        data["image_mean_abs_difference"] = round(statistics.mean(image_differences), 4)
        data["superpixel_agreement"] = round(statistics.mean(superpixel_agreement), 4)
        notes.append(f"speed-up {data['speedup']}x over the authors' path; identical pairings: {identical}; "
                     f"images differ by {data['image_mean_abs_difference']} (normalised units, mean abs), "
                     f"superpixel labels agree on {100 * data['superpixel_agreement']:.1f}% of pixels")
    rows += [total, cpu_total]
    return BenchResult(rows, data, notes)


def authors_load_sample(index, sample: dict, cfg, rng: np.random.Generator, superpixel_folder: Path,
                        timings: dict[str, float]) -> dict:
    """The authors' loading path, re-implemented for timing (see the module docstring); same augment draws."""
    import torch
    import torch.nn.functional as F
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from PIL import Image

    from slidr.data.augment import IMAGENET_MEAN, IMAGENET_STD, augment_pairs
    from slidr.data.scans import load_scan
    from slidr.data.superpixels import superpixel_path
    from slidr.data.voxelize import point_features, voxelize

    def timed(stage, start):
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start

    start = time.perf_counter()
    points = load_scan(index, sample, with_labels=False).points
    timed("read", start)
    cloud = LidarPointCloud(np.ascontiguousarray(points.T))
    images, superpixels, pairing_points, pairing_images = [], [], [], []
    for k, channel in enumerate(cfg.cameras):
        camera = sample["cameras"][channel]
        start = time.perf_counter()
        images.append(np.array(Image.open(index.resolve(camera["image"]))))
        timed("decode", start)
        start = time.perf_counter()
        superpixels.append(np.array(Image.open(superpixel_path(superpixel_folder, channel, camera["image"]))))
        timed("superpixels", start)
        start = time.perf_counter()
        pc = copy.deepcopy(cloud)
        for transform in (sample["lidar_to_ego"], sample["ego_pose"]):
            pc.rotate(np.asarray(transform)[:3, :3])
            pc.translate(np.asarray(transform)[:3, 3])
        for transform in (camera["ego_pose"], camera["camera_to_ego"]):
            pc.translate(-np.asarray(transform)[:3, 3])
            pc.rotate(np.asarray(transform)[:3, :3].T)
        depths = pc.points[2, :]
        uv = view_points(pc.points[:3, :], np.asarray(camera["intrinsic"]), normalize=True)
        mask = ((depths > 1.0) & (uv[0] > 1) & (uv[0] < camera["width"] - 1) & (uv[1] > 1)
                & (uv[1] < camera["height"] - 1))
        matching = np.where(mask)[0]
        pixels = np.round(np.flip(uv[0:2, mask].T, axis=1)).astype(np.int64)
        pairing_points.append(matching)
        pairing_images.append(np.concatenate([np.full((len(matching), 1), k, np.int64), pixels], axis=1))
        timed("project", start)
    start = time.perf_counter()
    full = torch.tensor(np.array([image / 255 for image in images], dtype=np.float32).transpose(0, 3, 1, 2))
    timed("normalize", start)
    start = time.perf_counter()
    image_hws = [tuple(image.shape[:2]) for image in images]
    result = augment_pairs(points[:, :3], np.concatenate(pairing_points), np.concatenate(pairing_images), image_hws,
                           cfg.image_size, cfg.augment, rng)
    out_hw = tuple(cfg.image_size)
    crops, maps = [], []
    for k, transform in enumerate(result.image_transforms):
        box = (slice(transform.top, transform.top + transform.height),
               slice(transform.left, transform.left + transform.width))
        crop = F.interpolate(full[k:k + 1, :, box[0], box[1]], size=out_hw, mode="bilinear", align_corners=False)
        labels = torch.from_numpy(superpixels[k][box].astype(np.float32))[None, None]
        labels = F.interpolate(labels, size=out_hw, mode="nearest")
        if transform.flip:
            crop, labels = crop.flip(-1), labels.flip(-1)
        crops.append(crop)
        maps.append(labels[0, 0].long())
    kept = np.concatenate([result.xyz, points[result.keep_points, 3:4]], axis=1)
    timed("augment", start)
    start = time.perf_counter()
    mean = torch.from_numpy(IMAGENET_MEAN)[None, :, None, None]
    std = torch.from_numpy(IMAGENET_STD)[None, :, None, None]
    normalized = (torch.cat(crops) - mean) / std
    timed("normalize", start)
    start = time.perf_counter()
    coords, kept_index, inverse_map = voxelize(kept, cfg.voxel.mode, cfg.voxel.size, cfg.voxel.azimuth_step_deg)
    feats = point_features(kept[kept_index], index.format, cfg.point_features)
    timed("voxelize", start)
    return {"points": kept, "voxel_coords": coords, "voxel_feats": feats, "inverse_map": inverse_map,
            "images": normalized.numpy(), "superpixels": torch.stack(maps).numpy(),
            "pairing_points": result.pairing_points, "pairing_images": result.pairing_images}


def _median_ms(seconds: list[float]) -> float:
    return round(1000 * statistics.median(seconds), 2) if seconds else 0.0
