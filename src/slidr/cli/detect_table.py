"""``slidr detect-table``: the paper's detection table (random init / PPKT / SLidR at 5 / 10 / 20% of the labels)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from slidr.cli.detect import detection_flags
from slidr.cli.settings import CommandSettings, count
from slidr.config import DetectionConfig

NAME = "detect-table"
HELP = ("the paper's 3D detection table: fine-tune random init / PPKT / SLidR at 5, 10 and 20 percent of the labels "
        "over seeds (resumable), table with the paper's numbers (markdown, JSON, chart)")
PAPER_CONFIG = "detection/detect_kitti.yaml"
SMOKE_CONFIG = "detection/detect_demo_cpu.yaml"


def _config_path(args: argparse.Namespace) -> Optional[str]:
    return args.config or (SMOKE_CONFIG if args.smoke else PAPER_CONFIG)


def _smoke_overrides(args: argparse.Namespace) -> list[str]:
    from slidr.analysis.detection_experiment import SMOKE_OVERRIDES

    return list(SMOKE_OVERRIDES) if args.smoke else []


SETTINGS = CommandSettings(DetectionConfig, flags=detection_flags(), config_path=_config_path,
                           default_config=PAPER_CONFIG,
                           extra_overrides=_smoke_overrides,
                           overrides_help="overrides of every run's config, e.g. trainer.epochs=40",
                           required=["--out"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"YAML config shared by every run (default: {PAPER_CONFIG}; with --smoke {SMOKE_CONFIG})")
    SETTINGS.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="table folder: runs/<cell>/ and the table files (required)")
    parser.add_argument("--pretrained-slidr", metavar="FILE", help="SLidR's pretrained.pt (row left out if absent)")
    parser.add_argument("--pretrained-ppkt", metavar="FILE", help="PPKT's pretrained.pt (row left out if absent)")
    parser.add_argument("--no-random", action="store_true", help="leave out the random-init row")
    parser.add_argument("--fractions", nargs="+", type=float, default=None, metavar="F",
                        help="label fractions (default: 0.05 0.1 0.2)")
    parser.add_argument("--seeds", type=count(1), default=3, help="runs per cell, seeds 0..N-1 (default: 3)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps per run on a tiny synthetic world (OUT/world unless --index), to check "
                             "that everything runs; the numbers mean nothing")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.detection_experiment import FRACTIONS, run_detection_table, smoke_world
    from slidr.config import with_changes

    cfg: DetectionConfig = args.settings
    if args.smoke and getattr(args, "setting:data.index", None) is None and not any(
            item.startswith("data.index=") for item in args.overrides):
        cfg = with_changes(cfg, {"data.index": str(smoke_world(Path(args.out) / "world"))})
    pretrained: dict[str, Optional[str]] = {} if args.no_random else {"random": None}
    if args.pretrained_ppkt:
        pretrained["ppkt"] = args.pretrained_ppkt
    if args.pretrained_slidr:
        pretrained["slidr"] = args.pretrained_slidr
    if not pretrained:
        args._parser.error("no row to run: give --pretrained-slidr / --pretrained-ppkt or drop --no-random")
    table = run_detection_table(cfg, pretrained, args.out, fractions=args.fractions or FRACTIONS,
                                seeds=range(args.seeds))
    print((Path(args.out) / "detection_table.md").read_text(), end="")
    print(f"table in {args.out}/detection_table.{{md,json,png}}; runs in {args.out}/runs/ "
          f"({sum(len(row) for row in table['cells'].values())} cells)")
    return 0
