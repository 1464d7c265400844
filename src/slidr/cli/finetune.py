"""``slidr finetune``: fine-tuning of a (pretrained) 3D backbone on semantic segmentation."""

from __future__ import annotations

import argparse

from slidr.cli.probe import add_arguments as _shared_arguments
from slidr.cli.probe import run_mode

NAME = "finetune"
HELP = "fine-tuning: whole 3D network + classifier (CE + Lovasz), evaluate (mIoU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _shared_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_mode(args, NAME)
