"""The README's "From data to results" runs as written (issue "Trust", item 11).

The commands are read from README.md itself, so the README cannot drift from what works. The first block runs on
the synthetic world, shortened by the options and overrides the README documents for that; the second (real data,
the paper's settings) is checked with ``--print-config``: every option, config name and override is accepted.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from slidr.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"

# what the README says shortens the flow ("--scenes 3 --frames 2 --image-size 192x108", "trainer.epochs=1
# trainer.max_steps=1"), plus quiet and single-process options for the test run
SHORTER = {
    "synth": ["--scenes", "3", "--frames", "2", "--image-size", "192x108", "--workers", "1", "--no-progress",
              "--no-preview"],
    "superpixels": ["--workers", "1", "--no-progress"],
    "pretrain": ["trainer.epochs=1", "trainer.max_steps=1", "--no-progress"],
    "probe": ["trainer.epochs=1", "trainer.max_steps=1"],
    "finetune": ["trainer.epochs=1", "trainer.max_steps=1"],
    "detect": ["trainer.epochs=1", "trainer.max_steps=1", "pictures=1"],
}


def readme_commands() -> list[list[list[str]]]:
    """The ``slidr`` commands of each code block of the section "From data to results", as argument lists."""
    text = README.read_text()
    section = text[text.index("## From data to results"):]
    section = section[:section.index("\n### ")]  # up to the next subsection (Configurations)
    blocks = []
    for block in re.findall(r"```\n(.*?)```", section, flags=re.S):
        joined = block.replace("\\\n", " ")
        commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
        blocks.append([words[1:] for words in commands if words and words[0] == "slidr"])
    return blocks


def test_the_readme_shows_both_flows():
    synthetic, real = readme_commands()
    assert [argv[0] for argv in synthetic] == ["synth", "prepare", "inspect", "superpixels", "pretrain", "pretrain",
                                               "probe", "finetune", "evaluate", "report", "synth", "prepare", "detect",
                                               "similarity", "knn"]
    assert {argv[0] for argv in real} == {"prepare", "superpixels", "pretrain", "probe", "finetune"}
    # the README documents the shortening the test applies
    text = README.read_text()
    assert "--scenes 3 --frames 2 --image-size 192x108" in text and "trainer.epochs=1 trainer.max_steps=1" in text


def test_the_real_data_commands_are_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _, real = readme_commands()
    for argv in real:
        assert main([*argv, "--print-config"]) == 0, argv
        yaml.safe_load(capsys.readouterr().out)


@pytest.mark.slow
def test_the_readme_flow_runs_on_the_synthetic_world(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    synthetic, _ = readme_commands()
    for argv in synthetic:
        code = main([*argv, *SHORTER.get(argv[0], [])])
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
    capsys.readouterr()
    runs = tmp_path / "runs"
    # probe and finetune built the pretrained file's network (the CPU configs leave it unset) and recorded it
    for name in ("probe", "ft"):
        saved = yaml.safe_load((runs / name / "config.yaml").read_text())
        assert saved["backbone"]["name"] == "minkunet14_half" and saved["backbone"]["in_channels"] == 1
    probe, ft = (json.loads((runs / name / "summary.json").read_text()) for name in ("probe", "ft"))
    assert probe["train_scans"] == 4 and ft["train_scans"] == 2  # 2 training scenes of 2 frames; half of them
    for path in ("sample0.json", "runs/probe/eval-val/evaluation.json", "report/report.md", "sim.png",
                 "knn/knn.gif", "data/synth/synth_manifest.json", "runs/det/evaluation.json"):
        assert (tmp_path / path).is_file(), path
    assert not (runs / "slidr" / "resume_changes.json").exists()  # the resume used the run's own settings
