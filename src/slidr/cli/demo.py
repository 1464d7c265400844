"""``slidr demo``: the end-to-end run on the embedded synthetic world (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = ("end to end on the synthetic world: generate, superpixels, pretrain SLidR and PPKT†, linear probing vs "
        "random init, results folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", metavar="DIR", help="results folder (default demo_output)")
    parser.add_argument("--config", metavar="FILE", help="demo config (default configs/demo/demo.yaml)")
    parser.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for both pretraining configs, e.g. trainer.epochs=1")
    parser.add_argument("--probe", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the probe config, e.g. trainer.epochs=5")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="demo config overrides, e.g. world=data/other scenes=4")


def run(args: argparse.Namespace) -> int:
    from slidr.demo import run_demo

    run_demo(args.out, args.config, args.overrides, args.pretrain, args.probe)
    return 0
