"""``slidr demo``: the end-to-end run on the embedded synthetic world (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Output
from slidr.config import DemoConfig

NAME = "demo"
HELP = ("end to end on the synthetic world: generate, superpixels, pretrain SLidR and PPKT†, linear probing vs "
        "random init, results folder")
DEFAULT_CONFIG = "demo/demo.yaml"
OUTPUTS = [Output("--out", "folder")]


def _sub_config_overrides(args: argparse.Namespace) -> list[str]:
    """``--pretrain KEY=VALUE`` applies to every pretraining of the demo, ``--probe KEY=VALUE`` to its probe."""
    return [f"pretrain.*.{item}" for item in args.pretrain] + [f"probe.{item}" for item in args.probe]


SETTINGS = CommandSettings(
    DemoConfig, config_help="demo config", default_config=DEFAULT_CONFIG, extra_overrides=_sub_config_overrides,
    overrides_help="demo config overrides, e.g. world=data/other scenes=4 pretrain.slidr.trainer.epochs=2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", metavar="DIR", help="results folder (default demo_output)")
    parser.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every pretraining config, e.g. trainer.epochs=1 "
                             "(= pretrain.*.trainer.epochs=1)")
    parser.add_argument("--probe", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the probe config, e.g. trainer.epochs=5 (= probe.trainer.epochs=5)")
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slidr.demo import run_demo

    run_demo(args.out, args.settings)
    return 0
