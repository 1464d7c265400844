"""``slidr inspect``: the numbers a user checks first for one sample of an index."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag
from slidr.config import InspectConfig

NAME = "inspect"
HELP = "print points, voxels, pairs per camera, superpixels per image and the label histogram of one sample"
SETTINGS = CommandSettings(InspectConfig, flags=[
    Flag("index"),
    Flag("sample", metavar="K"),
    Flag("superpixels", metavar="KEY"),
    Flag("superpixel_root"),
])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    from slidr.data.index import load_index
    from slidr.utils.io import write_json

    cfg: InspectConfig = args.settings
    index = load_index(cfg.index)
    report = inspect_sample(index, cfg.sample, cfg.superpixels, cfg.superpixel_root)
    _print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def find_sample(index, key: str) -> int:
    """Position of sample ``key`` (a position or a token) in ``index``."""
    from slidr.errors import SlidrError

    if key.lstrip("-").isdigit():
        position = int(key)
        if not 0 <= position < len(index.samples):
            raise SlidrError(f"--sample {key}: the index has {len(index.samples)} samples "
                             f"(0..{len(index.samples) - 1})")
        return position
    tokens = index.samples.column("token")
    if key not in tokens:
        raise SlidrError(f"--sample {key}: no sample with this token in {index.path}")
    return tokens.index(key)


def inspect_sample(index, key: str, superpixel_key: str | None = None, superpixel_root: str | None = None) -> dict:
    """The report of ``slidr inspect`` as a dict (the keys of its ``--json`` output)."""
    import numpy as np

    from slidr.config import VoxelConfig
    from slidr.data.classes import class_names
    from slidr.data.projection import project_to_cameras
    from slidr.data.scans import load_scan
    from slidr.data.voxelize import voxelize

    position = find_sample(index, key)
    sample = index.samples[position]
    scan = load_scan(index, sample)
    voxel = VoxelConfig()
    channels = list(sample["cameras"])
    _, pairing_images = project_to_cameras(scan.points, sample, channels)
    pairs = np.bincount(pairing_images[:, 0], minlength=len(channels))
    report = {
        "index": str(index.path),
        "sample": position,
        "token": sample["token"],
        "scene": sample["scene"],
        "num_points": int(scan.points.shape[0]),
        "num_points_dropped": scan.num_dropped,
        "num_voxels": {
            mode: int(voxelize(scan.points, mode, voxel.size, voxel.azimuth_step_deg)[0].shape[0])
            for mode in ("cylindrical", "cartesian")
        },
        "voxel_size": voxel.size,
        "azimuth_step_deg": voxel.azimuth_step_deg,
        "pairs_per_camera": {channel: int(count) for channel, count in zip(channels, pairs)},
    }
    report.update(_superpixels(index, sample, channels, superpixel_key, superpixel_root))
    if scan.labels is not None:
        names = ("ignore",) + class_names(index.format)
        counts = np.bincount(scan.labels, minlength=len(names))
        report["label_histogram"] = {name: int(count) for name, count in zip(names, counts)}
    return report


def _superpixels(index, sample, channels, key, root) -> dict:
    from slidr.data import superpixels

    folders = superpixels.computed_superpixel_dirs(index.path, root)
    if key is not None:
        folders = [folder for folder in folders if folder.name == key]
    default = superpixels.method_key("slic", 150)
    folders.sort(key=lambda folder: folder.name != default)
    if not folders:
        return {"superpixel_method": None, "superpixels_per_image": {}}
    folder = folders[0]
    counts = {}
    for channel in channels:
        path = superpixels.find_superpixel_file(folder, channel, sample["cameras"][channel]["image"], index.format)
        if path is not None:
            counts[channel] = superpixels.read_segment_count(path)
    return {"superpixel_method": folder.name, "superpixels_per_image": counts}


def _print_report(report: dict) -> None:
    print(f"sample {report['sample']} ({report['token']}, scene {report['scene']})")
    dropped = f" ({report['num_points_dropped']} non-finite dropped)" if report["num_points_dropped"] else ""
    print(f"  points: {report['num_points']}{dropped}")
    voxels = report["num_voxels"]
    print(f"  voxels: {voxels['cylindrical']} cylindrical, {voxels['cartesian']} cartesian "
          f"(size {report['voxel_size']} m, azimuth {report['azimuth_step_deg']} deg)")
    print("  pairs per camera: " + (", ".join(f"{c} {n}" for c, n in report["pairs_per_camera"].items()) or "none"))
    if report["superpixel_method"] is None:
        print("  superpixels: not computed (run `slidr superpixels --index ...`)")
    else:
        print(f"  superpixels per image ({report['superpixel_method']}): "
              + (", ".join(f"{c} {n}" for c, n in report["superpixels_per_image"].items()) or "none found"))
    if "label_histogram" in report:
        print("  labels: " + ", ".join(f"{name} {n}" for name, n in report["label_histogram"].items() if n))
    else:
        print("  labels: none (unlabelled sample)")
