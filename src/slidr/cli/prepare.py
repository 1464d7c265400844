"""``slidr prepare nuscenes|semantickitti``: index a dataset once, so training and evaluation read only the index."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag, Output
from slidr.config import PrepareKittiConfig, PrepareKittiObjectConfig, PrepareNuScenesConfig

NAME = "prepare"
HELP = "index a dataset (nuScenes keyframes, SemanticKITTI scans, KITTI object frames) into one .npz index file"
NUSCENES = CommandSettings(PrepareNuScenesConfig, flags=[Flag("dataroot"), Flag("version"), Flag("splits")],
                           required=["--out"])
SEMANTICKITTI = CommandSettings(PrepareKittiConfig, flags=[Flag("root")], required=["--out"])
KITTI_OBJECT = CommandSettings(PrepareKittiObjectConfig, flags=[Flag("root")], required=["--out"])
OUTPUTS = [Output("--out", "file")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    nuscenes = subparsers.add_parser("nuscenes", help="index a nuScenes dataroot (devkit layout)",
                                     description="index the keyframes of a nuScenes dataroot (devkit layout)")
    kitti = subparsers.add_parser("semantickitti", help="index SemanticKITTI sequences",
                                  description="index SemanticKITTI sequences (scans, labels, calibration, poses)")
    objects = subparsers.add_parser("kitti-object", help="index the KITTI 3D object benchmark (boxes)",
                                    description="index KITTI 3D object frames: training/{velodyne,image_2,calib,"
                                                "label_2}, optional testing/ and ImageSets/*.txt splits")
    for sub, settings in ((nuscenes, NUSCENES), (kitti, SEMANTICKITTI), (objects, KITTI_OBJECT)):
        settings.add_arguments(sub)
        sub.add_argument("--out", help="index file to write, an .npz whatever its name (e.g. data/index.npz; required)")


def run(args: argparse.Namespace) -> int:
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.data.prepare_semantickitti import prepare_semantickitti

    cfg = args.settings
    if args.dataset == "nuscenes":
        index = prepare_nuscenes(cfg.dataroot, cfg.version, args.out, cfg.splits)
    elif args.dataset == "kitti-object":
        from slidr.data.prepare_kitti_object import prepare_kitti_object

        index = prepare_kitti_object(cfg.root, args.out)
    else:
        index = prepare_semantickitti(cfg.root, args.out)
    print(f"wrote {args.out}: {len(index.samples)} samples, {len(index.scenes)} scenes; splits: "
          + ", ".join(f"{name} {len(scenes)}" for name, scenes in index.splits.items()))
    return 0
