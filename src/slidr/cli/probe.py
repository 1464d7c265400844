"""``slidr probe``: linear probing of a (pretrained) 3D backbone on semantic segmentation."""

from __future__ import annotations

import argparse

from slidr.cli.pretrain import add_resume_arguments
from slidr.cli.settings import CommandSettings, Flag, Output, none_or_text, resumed_run_config
from slidr.config import DownstreamConfig

NAME = "probe"
HELP = "linear probing: frozen 3D backbone, train a point-wise classifier, evaluate (mIoU)"


def downstream_settings(mode: str) -> CommandSettings:
    """The settings of ``slidr probe`` / ``slidr finetune``: a :class:`DownstreamConfig` whose ``mode`` is the
    command's; ``--pretrained`` wins over ``pretrained`` in the file, ``none`` means random initialisation;
    ``trainer.epochs`` null is resolved by the paper's rule for the mode and label fraction (``--print-config``
    shows the number)."""
    return CommandSettings(
        DownstreamConfig,
        flags=[Flag("pretrained", metavar="FILE", parse=none_or_text("none", "null", "random"))],
        config_help=f"YAML config, e.g. configs/downstream/{mode}_nuscenes.yaml",
        overrides_help="config overrides by dotted path, e.g. trainer.epochs=5 data.label_fraction=0.01 "
                       "(trainer.epochs unset: 50 for probing; fine-tuning 100 with 1%% of the labels, else 50)",
        base_config=resumed_run_config, fixed={"mode": mode}, required=["--out"],
        finalize=DownstreamConfig.with_resolved_epochs)


SETTINGS = downstream_settings(NAME)
OUTPUTS = [Output("--out", "folder")]


def add_shared_arguments(parser: argparse.ArgumentParser, settings: CommandSettings) -> None:
    """Options shared by ``slidr probe`` and ``slidr finetune``."""
    settings.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (checkpoints, model.pt, results) (required)")
    add_resume_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shared_arguments(parser, SETTINGS)


def run(args: argparse.Namespace) -> int:
    return run_mode(args, NAME)


def run_mode(args: argparse.Namespace, mode: str) -> int:
    """Train and evaluate with ``args.settings``; print the per-class table."""
    from slidr.analysis.report import per_class_table
    from slidr.methods.downstream import run_downstream

    summary = run_downstream(args.settings, args.out, resume=args.resume, allow_changes=args.allow_changes)
    if summary:
        print(per_class_table({mode: summary["evaluation"]}), end="")
        print(f"results in {args.out}")
    return 0
