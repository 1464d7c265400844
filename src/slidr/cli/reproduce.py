"""``slidr reproduce TABLE``: one of the paper's tables, every step of every cell, with the paper's numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import Output, count

NAME = "reproduce"
HELP = ("reproduce a table of the paper (table1, table6, efficiency, detection): index, superpixels, pretraining, "
        "probe / fine-tuning over seeds (resumable), table with the paper's numbers (markdown, JSON, chart)")
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slidr.analysis.paper import TABLES

    parser.add_argument("table", choices=TABLES, help="the table to reproduce")
    parser.add_argument("--dataroot", metavar="DIR", help="nuScenes dataroot (devkit layout): pretraining and the "
                                                          "nuScenes columns")
    parser.add_argument("--semantickitti", metavar="DIR", help="SemanticKITTI root (table1's SemanticKITTI column)")
    parser.add_argument("--kitti-object", metavar="DIR", help="KITTI 3D object root (the detection table)")
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes version (default: v1.0-trainval)")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="folder of everything: indexes/, pretrain/, runs/, the table files")
    parser.add_argument("--seeds", type=count(1), default=3,
                        help="downstream runs per cell, seeds 0..N-1 (default: 3); each pretraining runs once")
    parser.add_argument("--rows", nargs="+", metavar="ROW",
                        help="only these rows (cell families, e.g. table1_slidr; default: all of the table)")
    parser.add_argument("--workers", type=count(1), default=2, help="processes computing superpixels (default: 2)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their configs, run nothing")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of every run as YAML (detection: the runs), run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="shrink every run to a few steps of a small network; datasets not given become tiny "
                             "synthetic worlds in OUT/world/: checks the whole chain, the numbers mean nothing")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.paper import reproduce

    roots = {"nuscenes": args.dataroot, "semantickitti": args.semantickitti, "kitti_object": args.kitti_object}
    result = reproduce(args.table, args.out, roots, range(args.seeds), smoke=args.smoke, dry_run=args.dry_run,
                       workers=args.workers, version=args.version, rows=args.rows, print_config=args.print_config)
    if args.dry_run or args.print_config:
        print(result["plan"], end="")
        return 0
    stem = "detection/detection_table" if args.table == "detection" else args.table
    print((Path(args.out) / f"{stem}.md").read_text(), end="")
    print(f"table in {args.out}/{stem}.{{md,json,png}}")
    return 0
