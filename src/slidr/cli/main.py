"""Entry point of the ``slidr`` command: discovers the subcommands in :mod:`slidr.cli` and dispatches."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

import slidr.cli
from slidr import __version__
from slidr.errors import SlidrError
from slidr.utils.log import logger, setup_logging


def command_modules() -> list[ModuleType]:
    """The subcommand modules, sorted by name."""
    modules = []
    for info in pkgutil.iter_modules(slidr.cli.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        modules.append(importlib.import_module(f"slidr.cli.{info.name}"))
    return sorted(modules, key=lambda module: module.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slidr",
        description="Image-to-lidar self-supervised distillation (SLidR) and its baselines.",
    )
    parser.add_argument("--version", action="version", version=f"slidr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except SlidrError as error:
        logger.error("%s: error: %s", args.command, error)
        return 2
    except KeyboardInterrupt:
        logger.error("%s: interrupted", args.command)
        return 130


if __name__ == "__main__":
    sys.exit(main())
