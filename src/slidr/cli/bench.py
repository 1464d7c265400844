"""``slidr bench <name> [--json FILE]``: run one benchmark, print its table, write its JSON."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import time

import slidr.bench
from slidr.cli.settings import Output

NAME = "bench"
HELP = "run a benchmark: prints a table and writes JSON (--json FILE)"
OUTPUTS = [Output("--json", "file")]


def bench_modules():
    return sorted(
        (importlib.import_module(f"slidr.bench.{info.name}") for info in pkgutil.iter_modules(slidr.bench.__path__)),
        key=lambda module: module.NAME,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for module in bench_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        sub.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
        module.add_arguments(sub)
        sub.set_defaults(_bench=module)


def run(args: argparse.Namespace) -> int:
    import torch

    from slidr.bench import format_table
    from slidr.utils.io import write_json

    start = time.perf_counter()
    result = args._bench.run(args)
    print(format_table(result.rows))
    for title, table in result.tables.items():
        print(f"\n{title}")
        print(format_table(table))
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        data = dict(result.data)
        data.setdefault("benchmark", args.bench)
        data.setdefault(
            "machine",
            {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
        )
        data.setdefault("bench_wall_s", round(time.perf_counter() - start, 2))
        write_json(args.json, data)
        print(f"wrote {args.json}")
    return 0
