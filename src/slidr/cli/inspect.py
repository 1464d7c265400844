"""``slidr inspect``: the numbers a user checks first for one sample of an index."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag, Output
from slidr.config import InspectConfig

NAME = "inspect"
HELP = "print points, voxels, pairs per camera, superpixels per image and the label histogram of one sample"
SETTINGS = CommandSettings(InspectConfig, flags=[
    Flag("index"),
    Flag("sample", metavar="K"),
    Flag("superpixels", metavar="KEY"),
    Flag("superpixel_root"),
])
OUTPUTS = [Output("--json", "file")]


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
    from slidr.errors import UsageError

    if key.lstrip("-").isdigit():
        position = int(key)
        if not 0 <= position < len(index.samples):
            raise UsageError(f"--sample {key}: the index has {len(index.samples)} samples "
                             f"(0..{len(index.samples) - 1})")
        return position
    tokens = index.samples.column("token")
    if key not in tokens:
        raise UsageError(f"--sample {key}: no sample with this token in {index.path}")
    return tokens.index(key)


def no_camera_reason(index, sample) -> str:
    """Why a sample has no camera in the index (what ``slidr prepare`` did not find), in a few words."""
    if index.format != "semantickitti":
        return "the index holds no camera for this sample"
    lidar = index.resolve(sample["lidar"])
    sequence = lidar.parent.parent
    calib = sequence / "calib.txt"
    image = sequence / "image_2" / f"{lidar.stem}.png"
    keys = set()
    if calib.is_file():
        keys = {line.split(":", 1)[0].strip() for line in calib.read_text(errors="replace").splitlines() if ":" in line}
    missing = []
    if not calib.is_file():
        missing.append(f"{calib} does not exist")
    elif "P2" not in keys:
        missing.append(f"{calib} has no P2 (the image_2 camera's projection)")
    if not image.is_file():
        missing.append(f"{image} does not exist")
    if not missing:
        return "the index was prepared before the image and calibration were there: run slidr prepare again"
    return "SemanticKITTI pairs need the sequence's calib.txt (P2, Tr) and image_2/<frame>.png: " + "; ".join(missing)


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
    if not channels:
        report["no_camera_reason"] = no_camera_reason(index, sample)
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
    counts, missing = {}, {}
    for channel in channels:
        image = sample["cameras"][channel]["image"]
        path = superpixels.find_superpixel_file(folder, channel, image, index.format)
        if path is not None:
            counts[channel] = superpixels.read_segment_count(path)
        else:
            missing[channel] = str(superpixels.superpixel_path(folder, image))  # where slidr superpixels writes it
    return {"superpixel_method": folder.name, "superpixels_per_image": counts, "superpixels_missing": missing}


def _print_report(report: dict) -> None:
    print(f"sample {report['sample']} ({report['token']}, scene {report['scene']})")
    dropped = f" ({report['num_points_dropped']} non-finite dropped)" if report["num_points_dropped"] else ""
    print(f"  points: {report['num_points']}{dropped}")
    voxels = report["num_voxels"]
    print(f"  voxels: {voxels['cylindrical']} cylindrical, {voxels['cartesian']} cartesian "
          f"(size {report['voxel_size']} m, azimuth {report['azimuth_step_deg']} deg)")
    pairs = ", ".join(f"{c} {n}" for c, n in report["pairs_per_camera"].items())
    print(f"  pairs per camera: {pairs or 'none (' + report.get('no_camera_reason', 'no camera') + ')'}")
    if report["superpixel_method"] is None:
        print(f"  superpixels: not computed (run `slidr superpixels --index {report['index']}`)")
    else:
        found = ", ".join(f"{c} {n}" for c, n in report["superpixels_per_image"].items())
        missing = report.get("superpixels_missing") or {}
        if missing:
            first = next(iter(missing.values()))
            found += ("; " if found else "") + (f"missing for {', '.join(missing)} (e.g. {first}; run `slidr "
                                                f"superpixels --index {report['index']}` to complete them)")
        print(f"  superpixels per image ({report['superpixel_method']}): {found or 'none found'}")
    if "label_histogram" in report:
        print("  labels: " + ", ".join(f"{name} {n}" for name, n in report["label_histogram"].items() if n))
    else:
        print("  labels: none (unlabelled sample)")
