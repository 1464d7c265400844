"""``slidr prepare nuscenes|semantickitti``: index a dataset once, so training and evaluation read only the index."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag
from slidr.config import PrepareKittiConfig, PrepareNuScenesConfig

NAME = "prepare"
HELP = "index a dataset (nuScenes keyframes or SemanticKITTI scans) into one JSON file"
NUSCENES = CommandSettings(PrepareNuScenesConfig, flags=[Flag("dataroot"), Flag("version"), Flag("splits")],
                           required=["--out"])
SEMANTICKITTI = CommandSettings(PrepareKittiConfig, flags=[Flag("root")], required=["--out"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    nuscenes = subparsers.add_parser("nuscenes", help="index a nuScenes dataroot (devkit layout)",
                                     description="index the keyframes of a nuScenes dataroot (devkit layout)")
    kitti = subparsers.add_parser("semantickitti", help="index SemanticKITTI sequences",
                                  description="index SemanticKITTI sequences (scans, labels, calibration, poses)")
    for sub, settings in ((nuscenes, NUSCENES), (kitti, SEMANTICKITTI)):
        settings.add_arguments(sub)
        sub.add_argument("--out", help="index file to write (required)")


def run(args: argparse.Namespace) -> int:
    from slidr.data.index import prepare_nuscenes, prepare_semantickitti

    cfg = args.settings
    if args.dataset == "nuscenes":
        index = prepare_nuscenes(cfg.dataroot, cfg.version, args.out, cfg.splits)
    else:
        index = prepare_semantickitti(cfg.root, args.out)
    print(f"wrote {args.out}: {len(index.samples)} samples, {len(index.scenes)} scenes; splits: "
          + ", ".join(f"{name} {len(scenes)}" for name, scenes in index.splits.items()))
    return 0
