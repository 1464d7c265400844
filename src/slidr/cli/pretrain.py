"""``slidr pretrain --config FILE --out DIR [dotted.key=value ...] [--resume]``: self-supervised pretraining."""

from __future__ import annotations

import argparse
import json

from slidr.cli.settings import CommandSettings, Output, resumed_run_config
from slidr.config import PretrainConfig

NAME = "pretrain"
HELP = "pretrain a 3D backbone without labels (method=NAME: SLidR, its baselines, any registered method)"
SETTINGS = CommandSettings(
    PretrainConfig,
    config_help="YAML config (e.g. configs/pretrain/slidr_minkunet.yaml); default: the paper's SLidR settings",
    overrides_help="config overrides by dotted path, e.g. trainer.epochs=3 data.index=my/index.npz; "
                   "method: {names:method}; backbone.name: {names:backbone}; image.encoder: {names:image_encoder}; "
                   "optim.optimizer: {names:optimizer}",
    base_config=resumed_run_config, required=["--out"])
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slidr.registry import RegistryHelpFormatter

    parser.formatter_class = RegistryHelpFormatter  # lists registered names, only when --help is shown
    SETTINGS.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR",
                        help="run folder: config.yaml, checkpoints/, logs/, pretrained.pt, summary.json (required)")
    add_resume_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--allow-changes`` of the training commands (pretrain, probe, finetune)."""
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out with the run's own settings (its "
                             "config.yaml; --config is then optional): settings that differ from them are refused")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: continue with settings that differ from the run's config.yaml; "
                             "the changes are recorded in resume_changes.json")


def run(args: argparse.Namespace) -> int:
    from slidr.methods.pretrain import run_pretraining

    summary = run_pretraining(args.settings, args.out, resume=args.resume, enable_progress_bar=not args.no_progress,
                              allow_changes=args.allow_changes)
    if summary is not None:
        print(json.dumps({key: summary[key] for key in ("method", "epochs", "initial_loss", "final_loss",
                                                        "scans_per_s", "checkpoint")}, indent=2))
    return 0
