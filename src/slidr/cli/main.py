"""Entry point of the ``slidr`` command: discovers the subcommands in :mod:`slidr.cli` and dispatches."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

import slidr.cli
from slidr import __version__
from slidr.errors import SlidrError, UsageError
from slidr.utils.log import logger, setup_logging

# exit codes: the command line is wrong / the work failed / interrupted (documented in slidr.errors and README)
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def command_modules() -> list[ModuleType]:
    """The subcommand modules (those defining ``NAME`` and ``run``), sorted by name."""
    modules = []
    for info in pkgutil.iter_modules(slidr.cli.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"slidr.cli.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(module)
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
        sub.set_defaults(_run=module.run, _outputs=getattr(module, "OUTPUTS", []))
    return parser


def overrides_first(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with the ``KEY=VALUE`` overrides that follow a list option (``--lrs 0.001 0.01 optim.x=1``) moved
    before the command's options: argparse would otherwise take them as values of that option. Options whose values
    are themselves overrides (``slidr demo --pretrain KEY=VALUE ...``) keep theirs."""
    from slidr.cli.settings import is_override

    subparsers = next((action for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)
    position = next((i for i, word in enumerate(argv) if subparsers and word in subparsers.choices), None)
    if subparsers is None or position is None:
        return argv
    command = subparsers.choices[argv[position]]
    list_options = {option for action in command._actions if action.nargs in ("+", "*") and action.option_strings
                    and action.metavar != "KEY=VALUE" for option in action.option_strings}
    kept, moved, in_list = [], [], False
    for word in argv[position + 1:]:
        if word.startswith("-"):
            in_list = word.split("=", 1)[0] in list_options
        elif in_list and is_override(word):
            moved.append(word)
            continue
        kept.append(word)
    return [*argv[:position + 1], *moved, *kept]


def main(argv: list[str] | None = None) -> int:
    """Run ``slidr`` with ``argv``; returns the exit code (0 done, 1 the work failed, 2 the command line is wrong,
    130 interrupted). Errors are one line on stderr, never a traceback (``-v`` adds it for unexpected ones)."""
    from slidr.cli.settings import check_outputs, prepare_settings

    parser = build_parser()
    argv = overrides_first(list(sys.argv[1:] if argv is None else argv), parser)
    # parse_known_args: KEY=VALUE overrides after an option are left over by argparse, and placed here
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        parser.print_help()
        return EXIT_USAGE
    setup_logging(args.verbose)
    try:
        if prepare_settings(args, extras, parser):
            return 0
        check_outputs(args, args._outputs)
        return int(args._run(args) or 0)
    except SlidrError as error:
        logger.error("%s: error: %s", args.command, error)
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILURE
    except OSError as error:  # a file operation slidr does not wrap: still one line naming the file
        logger.debug("traceback", exc_info=True)
        logger.error("%s: error: %s", args.command, error)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        logger.error("%s: interrupted", args.command)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
