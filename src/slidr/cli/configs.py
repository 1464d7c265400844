"""``slidr configs [NAME]``: the packaged configs (the paper's settings by name), or one of them as YAML."""

from __future__ import annotations

import argparse

NAME = "configs"
HELP = "list the packaged configs (the paper's settings by name), or print one: slidr configs slidr_minkunet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="print this packaged config (e.g. pretrain/slidr_minkunet.yaml or slidr_minkunet); to "
                             "start your own: slidr configs slidr_minkunet > my.yaml")
    parser.add_argument("--check", action="store_true",
                        help="also load every packaged config with its config class (an error names the first bad one)")


def run(args: argparse.Namespace) -> int:
    from slidr.config import (
        load_config,
        packaged_config_class,
        packaged_config_dir,
        packaged_configs,
        resolve_config_path,
    )

    if args.name is not None:
        print(resolve_config_path(args.name).read_text(), end="")
        return 0
    root = packaged_config_dir()
    names = packaged_configs()
    for name in names:
        if args.check:
            load_config(packaged_config_class(name), name)
        print(f"{name:40s} {_summary(root / name)}")
    print(f"in {root}; --config takes a path or one of these names (with or without configs/ and .yaml)")
    return 0


def _summary(path) -> str:
    """The first comment line of a config file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
