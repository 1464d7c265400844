"""``slidr finetune``: fine-tuning of a (pretrained) 3D backbone on semantic segmentation."""

from __future__ import annotations

import argparse

from slidr.cli import probe
from slidr.cli.probe import add_shared_arguments, downstream_settings, run_mode

NAME = "finetune"
HELP = "fine-tuning: whole 3D network + classifier (CE + Lovasz), evaluate (mIoU)"
SETTINGS = downstream_settings(NAME)
OUTPUTS = probe.OUTPUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shared_arguments(parser, SETTINGS)


def run(args: argparse.Namespace) -> int:
    return run_mode(args, NAME)
