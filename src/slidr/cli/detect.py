"""``slidr detect``: fine-tune a (pretrained) 3D backbone on KITTI object detection and evaluate it (AP|R40)."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag, none_or_text
from slidr.config import DetectionConfig

NAME = "detect"
HELP = "3D object detection: fine-tune a (pretrained) backbone with a CenterPoint BEV head, evaluate (KITTI AP)"


def detection_flags() -> list[Flag]:
    """The options shared by ``slidr detect``, ``detect-table`` and ``detect-lr``."""
    return [Flag("data.index", option="--index", metavar="FILE",
                 help="kitti_object index (`slidr prepare kitti-object`; default: the config's data.index)"),
            Flag("data.train_split", option="--train-split", metavar="SPLIT",
                 help="training split (e.g. parametrizing to search hyper-parameters; default: the config's)"),
            Flag("data.val_split", option="--val-split", metavar="SPLIT",
                 help="evaluated split (verifying while searching hyper-parameters, never val; default: the "
                      "config's)")]


def fraction(text: str) -> float:
    """A label fraction in (0, 1] (``0.05`` or ``5%``)."""
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1] (or a percentage such as 5%), got {text}")
    return value


SETTINGS = CommandSettings(
    DetectionConfig,
    flags=[Flag("pretrained", metavar="FILE", parse=none_or_text("none", "null", "random")),
           Flag("data.label_fraction", option="--label-fraction", metavar="F", parse=fraction,
                help="share of the training frames used (every k-th frame, k = round(1/F); the paper: 0.05, 0.1, "
                     "0.2; default: the config's)"),
           *detection_flags()],
    config_help="YAML config, e.g. detection/detect_kitti.yaml (KITTI, MinkUNet34) or detection/detect_demo_cpu.yaml",
    overrides_help="config overrides by dotted path, e.g. trainer.epochs=5 optim.lr=0.001",
    required=["--out"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (checkpoints, model.pt, results) (required)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--name", help="row name in the report (default: pretraining and label fraction)")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.detection_experiment import detect
    from slidr.methods.detection_eval import format_ap_table

    summary = detect(args.settings, args.out, resume=args.resume, name=args.name)
    if summary:
        for metric in ("3d", "bev"):
            print(format_ap_table(summary["evaluation"], metric), end="")
        print(f"results in {args.out} (detection.md, pictures/)")
    return 0
