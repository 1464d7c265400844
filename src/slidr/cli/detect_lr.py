"""``slidr detect-lr``: search the detection learning rate on held-out training data (never on val)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import CommandSettings, Flag, none_or_text
from slidr.config import DetectionConfig

NAME = "detect-lr"
HELP = "learning-rate search for `slidr detect`: train on parametrizing, score on verifying, one run per candidate"
SETTINGS = CommandSettings(
    DetectionConfig,
    flags=[Flag("pretrained", metavar="FILE", parse=none_or_text("none", "null", "random")),
           Flag("data.index", option="--index", metavar="FILE",
                help="kitti_object index (default: the config's data.index)")],
    config_help="YAML config of the runs, e.g. detection/detect_demo_cpu.yaml",
    required=["--out", "--lrs"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="folder of the runs (lr_<value>/) and lr_search.md (required)")
    parser.add_argument("--lrs", nargs="+", type=float, metavar="LR", help="candidate learning rates (required)")
    parser.add_argument("--train-split", default="parametrizing", help="training split (default: parametrizing)")
    parser.add_argument("--val-split", default="verifying",
                        help="held-out split scoring the candidates (default: verifying; val and test are refused)")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.detection_experiment import search_learning_rates

    answer = search_learning_rates(args.settings, args.lrs, args.out, args.train_split, args.val_split)
    print((Path(args.out) / "lr_search.md").read_text(), end="")
    if answer["best"] is None:
        print(f"no best learning rate on {args.val_split}: every candidate scores the same")
    else:
        print(f"best learning rate on {args.val_split}: {answer['best']:g}")
    return 0
