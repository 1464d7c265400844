"""``slidr ablate``: the paper's ablations (teacher, superpixels, method, random init) on a synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import CommandSettings, Output, count
from slidr.config import AblationConfig

NAME = "ablate"
HELP = ("the paper's ablations at demo scale on a synthetic world: pretraining + linear probe per cell (teacher, "
        "superpixels, method, random init) over seeds, resumable; one table (markdown, JSON, chart)")
DEFAULT_CONFIG = "ablation/demo_cpu.yaml"
SETTINGS = CommandSettings(AblationConfig, default_config=DEFAULT_CONFIG,
                           overrides_help="overrides of the ablation config, e.g. pretrain.trainer.epochs=3 or "
                                          "cells.slidr.overrides=[loss.temperature=0.1]",
                           required=["--out"])
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--world", metavar="DIR",
                        help="synthetic world (slidr synth --out DIR); indexed and its missing superpixels computed "
                             "here (required unless --smoke)")
    parser.add_argument("--out", metavar="DIR", help="table folder: runs/<cell>/seed<s>/ and ablation.{md,json,png} "
                                                     "(required)")
    parser.add_argument("--cells", nargs="+", metavar="CELL", help="only these cells (default: all of the config)")
    parser.add_argument("--seeds", type=count(1), default=3, help="runs per cell, seeds 0..N-1 (default: 3)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their settings, run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps per run (on a tiny world in OUT/world unless --world): checks that "
                             "everything runs; the numbers mean nothing")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.ablation import dry_run_text, plan, run_ablation, select_cells, smoke_world, world_index
    from slidr.errors import UsageError

    cfg: AblationConfig = args.settings
    cells = select_cells(cfg, args.cells)
    seeds = list(range(args.seeds))
    if args.world is None and not args.smoke:
        raise UsageError("--world DIR is required (or --smoke for a tiny generated world)")
    world = Path(args.world) if args.world is not None else Path(args.out) / "world"
    if args.dry_run:
        index = world / "index.npz"
        print(dry_run_text(plan(cfg, index, Path(args.out), cells, seeds, args.smoke)), end="")
        return 0
    if args.world is None:
        smoke_world(world)
    index = world_index(world)
    table = run_ablation(cfg, index, args.out, cells, seeds, smoke=args.smoke)
    print((Path(args.out) / "ablation.md").read_text(), end="")
    print(f"table in {args.out}/ablation.{{md,json,png}}; {len(table['cells'])} cells in {table['wall_s']:.0f} s")
    return 0
