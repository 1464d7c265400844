"""``slidr bench data``: per-stage time of loading one pretraining sample, against the authors' loading path.

On the real nuScenes keyframe (1600x900 images; its SLIC superpixels are computed into a temporary folder first),
each repetition loads the sample twice with the same random draws:

- slidr's path (:func:`slidr.data.datasets.load_pretrain_sample`): projection of the points that may be visible
  only, JPEGs decoded at a DCT-scaling reduction, crop and resize in one step, superpixel label files evaluated at
  the crop's sampling grid only;
- a re-implementation of the authors' release: per camera a deep copy of the point cloud moved through the
  devkit's transform chain (``LidarPointCloud.rotate`` / ``translate``, ``view_points``), every image decoded
  in full and converted to float before cropping, superpixel maps stored as the authors store them (an 8-bit PNG
  written by Pillow, written here from slidr's label files) read in full with Pillow, crops and resizes on float
  tensors (bilinear / nearest interpolation).

Both must give identical pairings (checked every repetition); the speed-up is their measured ratio. Per stage,
the wall time and the process CPU time are reported (medians over the repetitions): on a shared machine the CPU
time stays nearer what one idle core would take; run pinned to one core (``taskset -c 0``) and compare ratios of
one run. Images differ slightly from the authors' (antialiased resize of a DCT-scaled decode vs. plain bilinear of
the full image) and from the same antialiased resize of the fully decoded JPEG: both mean absolute differences are
reported. Finally, ways to store the superpixel maps are compared on the sample's six maps (``superpixel_storage``:
CPU time to get a random crop's labels, size per map, size for all nuScenes camera images).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from slidr.bench import DEVICE_FLAG, BenchResult, DeviceSetting, cpu_only_notes
from slidr.bench.superpixels import NUSCENES_CAMERA_IMAGES
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import at_least, setting, subkey
from slidr.errors import SlidrError

NAME = "data"
HELP = "time the stages of loading a pretraining sample (real nuScenes keyframe) vs. the authors' loading path"
STAGES = ("read", "project", "augment", "decode", "normalize", "superpixels", "voxelize")


@dataclass(frozen=True)
class DataBenchConfig(DeviceSetting):
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
    Flag("reference", option="--no-reference", negate=True, help="skip the authors' path"), DEVICE_FLAG])


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
        result = _measure(index_path, data_cfg, cfg.repeats, cfg.reference, Path(tmp))
    result.data["device"] = "cpu"
    result.notes += cpu_only_notes(cfg.device, "loading a sample (decoding, projection, voxelization) is CPU work "
                                               "done by the data loader's workers")
    return result


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


def _measure(index_path: Path, cfg, repeats: int, reference: bool, tmp: Path) -> BenchResult:
    from slidr.data.datasets import load_pretrain_sample
    from slidr.data.index import load_index
    from slidr.data.superpixels import superpixel_dir

    index = load_index(index_path)
    sample = index.samples[0]
    folder = superpixel_dir(index_path)
    if reference:
        authors_files = _write_authors_superpixels(index, sample, cfg.cameras, folder, tmp / "authors_superpixels")
    fast_totals, fast_stages, slow_totals, slow_stages = [], [], [], []
    fast_cpu, slow_cpu = [], []  # process CPU time: what one core spends, whatever else runs on the machine
    identical = True
    image_differences, full_decode_differences, superpixel_agreement = [], [], []
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
        slow = authors_load_sample(index, sample, cfg, np.random.default_rng(repeat), authors_files, timings)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if repeat:
            slow_totals.append(elapsed)
            slow_cpu.append(cpu)
            slow_stages.append(timings)
        identical &= np.array_equal(fast["pairing_points"], slow["pairing_points"])
        identical &= np.array_equal(fast["pairing_images"], slow["pairing_images"])
        image_differences.append(float(np.abs(fast["images"] - slow["images"]).mean()))
        full = _full_decode_images(index, sample, cfg, slow["image_transforms"])
        full_decode_differences.append(float(np.abs(fast["images"] - full).mean()))
        superpixel_agreement.append(float((fast["superpixels"] == slow["superpixels"]).mean()))

    fast_ms = _median_ms(fast_totals)
    data: dict[str, Any] = {
        "ms_per_sample": fast_ms, "cpu_ms_per_sample": _median_ms(fast_cpu), "points": len(fast["points"]),
        "pairs": len(fast["pairing_points"]), "cameras": len(cfg.cameras), "image_size": list(cfg.image_size),
        "repeats": repeats}
    rows = []
    for stage in STAGES:
        row = {"stage": stage, "slidr_ms": _median_ms([t.get(stage, 0.0) for t in fast_stages])}
        if reference:
            row["authors_ms"] = _median_ms([t.get(stage, 0.0) for t in slow_stages])
        row["slidr_cpu_ms"] = _median_ms([t.get(f"cpu:{stage}", 0.0) for t in fast_stages])
        if reference:
            row["authors_cpu_ms"] = _median_ms([t.get(f"cpu:{stage}", 0.0) for t in slow_stages])
        data[f"{stage}_ms"] = row["slidr_ms"]
        data[f"{stage}_cpu_ms"] = row["slidr_cpu_ms"]
        rows.append(row)
    total = {"stage": "total", "slidr_ms": fast_ms}
    cpu_total = {"stage": "total (CPU time)", "slidr_ms": data["cpu_ms_per_sample"]}
    notes = []
    if reference:
        slow_ms = _median_ms(slow_totals)
        total["authors_ms"] = slow_ms
        cpu_total["authors_ms"] = _median_ms(slow_cpu)
        data["authors_path"] = {"ms_per_sample": slow_ms, "cpu_ms_per_sample": cpu_total["authors_ms"],
                                **{f"{stage}_ms": row["authors_ms"] for stage, row in zip(STAGES, rows)},
                                **{f"{stage}_cpu_ms": row["authors_cpu_ms"] for stage, row in zip(STAGES, rows)}}
        data["speedup"] = round(slow_ms / fast_ms, 2)
        data["speedup_cpu"] = round(cpu_total["authors_ms"] / data["cpu_ms_per_sample"], 2)
        data["pairings_identical"] = bool(identical)
        data["image_mean_abs_difference"] = round(statistics.mean(image_differences), 4)
        data["image_mean_abs_difference_vs_full_decode"] = round(statistics.mean(full_decode_differences), 4)
        data["superpixel_agreement"] = round(statistics.mean(superpixel_agreement), 4)
        notes.append(f"speed-up {data['speedup']}x over the authors' path ({data['speedup_cpu']}x in CPU time); "
                     f"identical pairings: {identical}; images differ by {data['image_mean_abs_difference']} "
                     f"(normalised units, mean abs; {data['image_mean_abs_difference_vs_full_decode']} from the same "
                     f"resize of the fully decoded JPEGs), superpixel labels agree on "
                     f"{100 * data['superpixel_agreement']:.1f}% of pixels")
    data["superpixel_storage"] = _superpixel_storage(index, sample, cfg, folder, tmp / "storage")
    notes.append("superpixel storage, per 1600x900 map (CPU ms to get a crop's labels; KB; GB for nuScenes' "
                 f"{NUSCENES_CAMERA_IMAGES:,} images): " + "; ".join(
                     f"{row['storage']} {row['cpu_ms_per_image']} ms, {row['kb_per_image']} KB, "
                     f"{row['nuscenes_gb']} GB" for row in data["superpixel_storage"]))
    rows += [total, cpu_total]
    return BenchResult(rows, data, notes)


def _full_decode_images(index, sample: dict, cfg, transforms) -> np.ndarray:
    """The sample's images decoded in full (no DCT scaling), then cropped and resized as slidr does."""
    from slidr.data.augment import normalize_images, transform_image
    from slidr.data.io import read_image

    return normalize_images(np.stack([
        transform_image(read_image(index.resolve(sample["cameras"][channel]["image"])), transform, cfg.image_size)
        for channel, transform in zip(cfg.cameras, transforms)]))


def _superpixel_storage(index, sample: dict, cfg, folder: Path, out: Path, crops: int = 10) -> list[dict]:
    """Ways to store the sample's superpixel maps: size, and CPU time to get the labels of random crops."""
    from PIL import Image

    from slidr.data.augment import (
        ImageTransform,
        random_crop_box,
        source_indices,
        transform_labels,
    )
    from slidr.data.superpixels import (
        find_superpixel_file,
        open_labels,
        read_label_png,
        read_labels,
        write_label_png,
        write_labels,
    )

    def runs(path, transform):
        return open_labels(path).sample(*source_indices(transform, cfg.image_size))

    def png16(path, transform):
        return transform_labels(read_label_png(path), transform, cfg.image_size)

    def png8(path, transform):
        with Image.open(path) as image:
            return transform_labels(np.asarray(image), transform, cfg.image_size)

    def npy(path, transform):
        rows, cols = source_indices(transform, cfg.image_size)
        return np.load(path, mmap_mode="r")[rows][:, cols]

    def pillow_png(path, labels):
        Image.fromarray(labels if labels.max() > 255 else labels.astype(np.uint8)).save(path)

    def small_npy(path, labels):
        np.save(path, labels if labels.max() > 255 else labels.astype(np.uint8))

    candidates = [
        ("label file, zlib (slidr)", ".runs", lambda path, labels: write_labels(path, labels), runs),
        ("label file, uncompressed", ".runs", lambda path, labels: write_labels(path, labels, compress=False), runs),
        ("16-bit PNG (slidr before)", ".png", write_label_png, png16),
        ("8-bit PNG, Pillow (authors)", ".png", pillow_png, png8),
        ("uint8/16 .npy, memory-mapped", ".npy", small_npy, npy),
    ]
    # the files this benchmark computed above
    maps = [read_labels(cast(Path, find_superpixel_file(folder, channel, sample["cameras"][channel]["image"],
                                                          index.format)))
            for channel in cfg.cameras]
    rng = np.random.default_rng(0)
    transforms = [ImageTransform(*random_crop_box(labels.shape, rng, cfg.augment.crop_min_area,
                                                  cfg.augment.crop_aspect_range), flip=bool(rng.random() < 0.5))
                  for labels in maps for _ in range(crops)]
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for position, (name, suffix, write, read) in enumerate(candidates):
        paths = [out / f"{position}_{k}{suffix}" for k in range(len(maps))]
        for path, labels in zip(paths, maps):
            write(path, labels)
        seconds = []
        for k, transform in enumerate(transforms):
            path, labels = paths[k // crops], maps[k // crops]
            start = time.process_time()
            got = read(path, transform)
            seconds.append(time.process_time() - start)
            if not np.array_equal(got, transform_labels(labels, transform, cfg.image_size)):
                raise SlidrError(f"bench data: superpixel storage {name!r} reads other labels than it stored")
        size = statistics.mean(path.stat().st_size for path in paths)
        results.append({"storage": name, "cpu_ms_per_image": _median_ms(seconds), "kb_per_image": round(size / 1024, 1),
                        "nuscenes_gb": round(size * NUSCENES_CAMERA_IMAGES / 1e9, 1)})
    return results


def _write_authors_superpixels(index, sample: dict, channels, folder: Path, out: Path) -> dict[str, Path]:
    """The sample's superpixels stored as the authors store them: an 8-bit PNG written by Pillow per image.

    (``superpixel_segmenter.py`` of the authors' release: ``Image.fromarray(labels.astype(np.uint8)).save``.)
    Maps with labels above 255, which the authors' uint8 cast would wrap, are written as 16-bit PNGs.
    """
    from PIL import Image

    from slidr.data.superpixels import find_superpixel_file, read_labels

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for channel in channels:
        image = sample["cameras"][channel]["image"]
        path = find_superpixel_file(folder, channel, image, index.format)
        if path is None:
            raise SlidrError(f"bench data: no superpixels for {image} in {folder}; run `slidr superpixels`")
        labels = read_labels(path)
        files[channel] = out / f"{channel}.png"
        Image.fromarray(labels if labels.max() > 255 else labels.astype(np.uint8)).save(files[channel])
    return files


def authors_load_sample(index, sample: dict, cfg, rng: np.random.Generator, superpixel_files: dict[str, Path],
                        timings: dict[str, float]) -> dict:
    """The authors' loading path, re-implemented for timing (see the module docstring); same augment draws.

    ``superpixel_files``: per camera channel, its superpixel PNG as the authors store them.
    """
    import torch
    import torch.nn.functional as F
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from PIL import Image

    from slidr.data.augment import IMAGENET_MEAN, IMAGENET_STD, augment_pairs
    from slidr.data.datasets import StageTimer
    from slidr.data.scans import load_scan
    from slidr.data.voxelize import point_features, voxelize

    stage = StageTimer(timings)
    with stage("read"):
        points = load_scan(index, sample, with_labels=False).points
    cloud = LidarPointCloud(np.ascontiguousarray(points.T))
    images, superpixels, pairing_points, pairing_images = [], [], [], []
    for k, channel in enumerate(cfg.cameras):
        camera = sample["cameras"][channel]
        with stage("decode"):
            images.append(np.array(Image.open(index.resolve(camera["image"]))))
        with stage("superpixels"):
            superpixels.append(np.array(Image.open(superpixel_files[channel])))
        with stage("project"):
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
    with stage("normalize"):
        full = torch.tensor(np.array([image / 255 for image in images], dtype=np.float32).transpose(0, 3, 1, 2))
    with stage("augment"):
        image_hws = [tuple(image.shape[:2]) for image in images]
        result = augment_pairs(points[:, :3], np.concatenate(pairing_points), np.concatenate(pairing_images),
                               image_hws, cfg.image_size, cfg.augment, rng)
        out_hw = tuple(cfg.image_size)
        crops, maps = [], []
        for k, transform in enumerate(result.image_transforms):
            box = (slice(transform.top, transform.top + transform.height),
                   slice(transform.left, transform.left + transform.width))
            crop = F.interpolate(full[k:k + 1, :, box[0], box[1]], size=out_hw, mode="bilinear",
                                 align_corners=False)
            labels = torch.from_numpy(superpixels[k][box].astype(np.float32))[None, None]
            labels = F.interpolate(labels, size=out_hw, mode="nearest")
            if transform.flip:
                crop, labels = crop.flip(-1), labels.flip(-1)
            crops.append(crop)
            maps.append(labels[0, 0].long())
        kept = np.concatenate([result.xyz, points[result.keep_points, 3:4]], axis=1)
    with stage("normalize"):
        mean = torch.from_numpy(IMAGENET_MEAN)[None, :, None, None]
        std = torch.from_numpy(IMAGENET_STD)[None, :, None, None]
        normalized = (torch.cat(crops) - mean) / std
    with stage("voxelize"):
        coords, kept_index, inverse_map = voxelize(kept, cfg.voxel.mode, cfg.voxel.size,
                                                   cfg.voxel.azimuth_step_deg)
        feats = point_features(kept[kept_index], index.format, cfg.point_features)
    return {"points": kept, "voxel_coords": coords, "voxel_feats": feats, "inverse_map": inverse_map,
            "images": normalized.numpy(), "superpixels": torch.stack(maps).numpy(),
            "pairing_points": result.pairing_points, "pairing_images": result.pairing_images,
            "image_transforms": result.image_transforms}


def _median_ms(seconds: list[float]) -> float:
    return round(1000 * statistics.median(seconds), 2) if seconds else 0.0
