"""Resuming continues a run with its own settings (issue "Trust", item 5).

A resumed run whose settings differ from its ``config.yaml`` (an override, another ``--config``, an option) is
refused with the keys that differ, before any work; ``--allow-changes`` continues with the new values and records
them in ``resume_changes.json``. Without ``--config``, ``--resume`` starts from the run's ``config.yaml``.
"""

from __future__ import annotations

import json

import pytest
import yaml

from slidr.cli.main import EXIT_USAGE, main
from slidr.config import DownstreamConfig, PretrainConfig, load_config, save_config, with_changes
from slidr.engine.checkpoint import CHECKPOINT_DIR, RESUME_CHANGES_NAME, config_differences, start_run_folder
from slidr.errors import ConfigError


def _saved_run(folder, cfg):
    """A run folder as an interrupted run leaves it: its config and a checkpoint."""
    (folder / CHECKPOINT_DIR).mkdir(parents=True)
    (folder / CHECKPOINT_DIR / "epoch=0000.ckpt").write_bytes(b"checkpoint")
    save_config(cfg, folder / "config.yaml")
    return folder


@pytest.fixture
def pretrain_run(tmp_path):
    cfg = load_config(PretrainConfig, "pretrain/demo_cpu.yaml", ["data.index=data/mine/index.npz"])
    return _saved_run(tmp_path / "run", cfg), cfg


def test_differences_are_found_at_every_depth():
    before = {"optim": {"lr": 0.001}, "trainer": {"epochs": 2, "devices": [0, 1]}, "method": "slidr"}
    after = {"optim": {"lr": 0.5}, "trainer": {"epochs": 2, "devices": [0]}, "method": "slidr", "extra": 1}
    assert config_differences(before, after) == {"optim.lr": (0.001, 0.5), "trainer.devices": ([0, 1], [0]),
                                                 "extra": (None, 1)}
    assert config_differences(before, before) == {}


@pytest.mark.parametrize("changes", [
    {"optim.lr": 0.5},  # the case: lr 0.001 became 0.5
    {"data.index": "data/other/index.npz", "trainer.epochs": 12},
    {"backbone.name": "minkunet14", "image.weights": "teacher.pth", "data.image_size": [224, 416]},
])
def test_changed_settings_are_refused_naming_each_key(pretrain_run, changes):
    folder, cfg = pretrain_run
    saved = (folder / "config.yaml").read_text()
    changed = with_changes(cfg, changes)
    with pytest.raises(ConfigError) as caught:
        start_run_folder(folder, changed, resume=True)
    message = str(caught.value)
    for key, value in changes.items():
        assert f"{key}: run " in message and f"now {value!r}" in message, key
    assert "--allow-changes" in message
    assert (folder / "config.yaml").read_text() == saved  # nothing rewritten
    assert not (folder / RESUME_CHANGES_NAME).exists()


def test_allowed_changes_are_saved_and_recorded(pretrain_run):
    folder, cfg = pretrain_run
    assert start_run_folder(folder, cfg, resume=True) is not None  # the same settings: fine, nothing recorded
    assert not (folder / RESUME_CHANGES_NAME).exists()
    first = with_changes(cfg, {"trainer.epochs": 12})
    start_run_folder(folder, first, resume=True, allow_changes=True)
    second = with_changes(first, {"optim.lr": 0.01})
    start_run_folder(folder, second, resume=True, allow_changes=True)
    assert load_config(PretrainConfig, folder / "config.yaml") == second
    records = json.loads((folder / RESUME_CHANGES_NAME).read_text())
    assert [r["changes"] for r in records] == [{"trainer.epochs": {"run": 6, "now": 12}},
                                               {"optim.lr": {"run": 0.001, "now": 0.01}}]
    assert all(r["checkpoint"] == "epoch=0000.ckpt" and r["time"] for r in records)


def test_a_fresh_start_is_not_a_resume(tmp_path):
    # --resume on a folder without checkpoints starts from scratch: its settings are simply the new ones
    folder = tmp_path / "run"
    folder.mkdir()
    save_config(PretrainConfig(), folder / "config.yaml")
    changed = with_changes(PretrainConfig(), {"optim.lr": 0.1})
    assert start_run_folder(folder, changed, resume=True) is None
    assert load_config(PretrainConfig, folder / "config.yaml") == changed


def test_command_line_resume_uses_the_runs_settings(pretrain_run, capsys):
    folder, cfg = pretrain_run
    # without --config: the run's config.yaml is the base (data.index and lr as saved)
    assert main(["pretrain", "--out", str(folder), "--resume", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["index"] == "data/mine/index.npz" and printed["optim"]["lr"] == 0.001
    # an override that differs is refused before any work, with the key and both values
    for argv, key in ((["optim.lr=0.5"], "optim.lr: run 0.001, now 0.5"),
                      (["--config", "pretrain/demo_cpu.yaml"], "data.index: run 'data/mine/index.npz', now "
                                                               "'data/synth/index.npz'"),
                      (["trainer.batch_size=2", "optim.lr=1e-3"], "trainer.batch_size: run 4, now 2")):
        assert main(["pretrain", "--out", str(folder), "--resume", "--no-progress", *argv]) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0] and "--allow-changes" in err[0], argv
    assert "optim.lr" not in err[0]  # 1e-3 is the saved 0.001: not a change


def test_downstream_resume_is_held_to_its_settings_too(tmp_path, capsys):
    cfg = load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml",
                      ["mode=probe", "backbone.name=minkunet14_half", "backbone.in_channels=1"])
    folder = _saved_run(tmp_path / "probe", cfg)
    assert main(["probe", "--out", str(folder), "--resume", "data.label_fraction=0.5"]) == EXIT_USAGE
    assert "data.label_fraction: run 1.0, now 0.5" in capsys.readouterr().err
    assert main(["finetune", "--out", str(folder), "--resume"]) == EXIT_USAGE  # another command, same folder
    assert "mode: run 'probe', now 'finetune'" in capsys.readouterr().err


def test_toy_training_resumes_only_with_its_settings(tmp_path):
    from test_pretrain_trainer import InterruptAtStep, StopAfter, _config, _train

    cfg = _config(**{"trainer.epochs": 2})
    with pytest.raises(StopAfter):
        _train(tmp_path, "run", cfg=cfg, callbacks=[InterruptAtStep(4)])
    with pytest.raises(ConfigError, match="optim.lr: run 0.05, now 0.5"):
        _train(tmp_path, "run", cfg=with_changes(cfg, {"optim.lr": 0.5}), resume=True)
    summary = _train(tmp_path, "run", cfg=cfg, resume=True)
    assert summary["epochs"] == 2


def test_the_demo_says_how_to_restart_a_run_of_other_settings(tmp_path):
    from slidr import demo

    cfg = load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml",
                      ["mode=probe", "backbone.name=minkunet14_half", "backbone.in_channels=1"])
    folder = _saved_run(tmp_path / "probe-slidr", cfg)
    with pytest.raises(ConfigError, match=r"probe-slidr holds an interrupted run of an earlier demo with other "
                                          r"settings \(trainer.epochs: 50 there, 2 now\); delete .*probe-slidr"):
        demo.probe(with_changes(cfg, {"trainer.epochs": 2}), folder)
