"""The command line: every subcommand and benchmark documents its options, and errors are one clear line."""

import subprocess
import sys

import pytest

from slidr.cli.bench import bench_modules
from slidr.cli.main import build_parser, command_modules, main


def _help(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0


def test_every_command_has_help(capsys):
    names = [module.NAME for module in command_modules()]
    assert len(names) == len(set(names)), "two command modules share a name"
    for name in names:
        _help([name])
        out = capsys.readouterr().out
        assert f"usage: slidr {name}" in out
        parser = build_parser()
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            if action.dest not in ("help",) and action.option_strings:
                assert action.help, f"slidr {name} {action.option_strings[0]} has no help text"


def test_every_benchmark_has_help_and_json_option(capsys):
    for module in bench_modules():
        _help(["bench", module.NAME])
        assert "--json" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "slidr.cli.main", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "bench" in result.stdout


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage: slidr" in capsys.readouterr().out
