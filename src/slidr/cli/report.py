"""``slidr report``: several evaluated runs side by side in one per-class table."""

from __future__ import annotations

import argparse

from slidr.cli.settings import Output

NAME = "report"
HELP = "put evaluated runs side by side: per-class table (markdown + JSON) and grouped bar chart"
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders (their evaluation.json) or evaluation JSON files")
    parser.add_argument("--names", nargs="+", metavar="NAME", help="row names, one per run")
    parser.add_argument("--out", metavar="DIR", default="report", help="output folder (default: ./report)")
    parser.add_argument("--title", help="title of the table and chart")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.report import load_evaluation, per_class_table, run_names, write_report

    names = run_names(args.runs, args.names)
    runs = {name: load_evaluation(path) for name, path in zip(names, args.runs)}
    paths = write_report(runs, args.out, stem="report", title=args.title)
    print(per_class_table(runs), end="")
    print(f"written {paths['markdown']}, {paths['json']}, {paths['chart']}")
    return 0
