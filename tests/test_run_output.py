"""What a training run prints (issue "Trust", items 13 and 15).

One line per real event: none of Lightning's tips, device summaries, "modules in eval mode" or ``weights_only``
notices, no empty log folders; after the first steps one line with the time per step, per epoch and for the rest
of the run; a config sized for a GPU says so when it runs on a CPU.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from types import SimpleNamespace

import pytest

from slidr.config import DownstreamConfig, PretrainConfig, load_config, packaged_config_class, packaged_configs
from slidr.engine import trainer as engine_trainer
from slidr.engine.trainer import TimeEstimate, warn_if_sized_for_another_device

NOISE = ["Tip:", "litlogger", "LitLogger", "GPU available", "TPU available", "eval mode", "weights_only",
         "`Trainer.fit` stopped", "LeafSpec", "logging interval", "training_step` returned `None`",
         "Loading `train_dataloader`"]


def _said(capfd, caplog, caught) -> str:
    out, err = capfd.readouterr()
    return "\n".join([out, err, caplog.text, *(str(w.message) for w in caught)])


def test_training_runs_print_no_lightning_noise_and_leave_no_empty_folders(tmp_path, capfd, caplog):
    from test_pretrain_trainer import InterruptAtStep, NoisyPoints, StopAfter, _config, _train

    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a run shorter than its logging interval, with skipped (empty) batches and the image-teacher-like eval
        # module; then one interrupted and resumed (loading a checkpoint)
        short = _config(**{"trainer.epochs": 1, "trainer.log_every_n_steps": 50, "trainer.batch_size": 1})
        _train(tmp_path, "short", cfg=short, dataset=NoisyPoints(size=4, empty_items=(1,)))
        with pytest.raises(StopAfter):
            _train(tmp_path, "resumed", callbacks=[InterruptAtStep(4)])
        _train(tmp_path, "resumed", resume=True)
    said = _said(capfd, caplog, caught)
    for noise in NOISE:
        assert noise not in said, noise
    assert not (tmp_path / "short" / "logs").exists()  # nothing logged: no empty logs/version_0
    assert (tmp_path / "resumed" / "logs" / "version_0" / "metrics.csv").is_file()
    assert (tmp_path / "resumed" / "logs" / "version_1" / "metrics.csv").is_file()  # one version per attempt


def test_downstream_runs_print_no_lightning_noise(tmp_path, capfd, caplog, monkeypatch):
    import numpy as np
    import torch

    import slidr.methods.downstream as downstream
    from test_downstream import TinyBackbone, collate, make_scan

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(17, 1)).astype(np.float32)
    scans = {"train": [make_scan(rng, [1, 2, 3], codes) for _ in range(4)],
             "val": [make_scan(rng, [1, 2, 3], codes) for _ in range(2)]}
    monkeypatch.setattr(downstream, "build_segmentation_model",
                        lambda cfg, n, weights=None, reset_head=True: (TinyBackbone(1, n), {"method": None}))
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("probe", "finetune"):
            cfg = load_config(DownstreamConfig, None, [f"mode={mode}", "trainer.epochs=2", "trainer.batch_size=2",
                                                       "trainer.accelerator=cpu", "lovasz=false"])
            downstream.run_downstream(cfg, tmp_path / mode, enable_progress_bar=False,
                                      dataset_factory=lambda cfg, split, train: (scans[split], collate))
    said = _said(capfd, caplog, caught)
    for noise in NOISE:
        assert noise not in said, noise
    assert torch.get_num_threads() >= 1
    for mode in ("probe", "finetune"):
        assert not (tmp_path / mode / "logs").exists() or any((tmp_path / mode / "logs").iterdir())


# --- the time estimate -----------------------------------------------------------------------------------------------


def _fake_trainer(batches, max_epochs=-1, max_steps=-1, global_step=0):
    return SimpleNamespace(num_training_batches=batches, max_epochs=max_epochs, max_steps=max_steps,
                           global_step=global_step, is_global_zero=True)


def _estimate(monkeypatch, step_ends, trainer, **kwargs):
    """Run the callback over steps ending at ``step_ends`` seconds; returns what it said (or None)."""
    clock = iter([0.0, *step_ends])
    monkeypatch.setattr(engine_trainer.time, "perf_counter", lambda: next(clock))
    estimate = TimeEstimate(**kwargs)
    estimate.on_train_start(trainer, None)
    for step, _ in enumerate(step_ends):
        trainer.global_step = step + 1
        estimate.on_train_batch_end(trainer, None, None, None, step)
        if estimate.said:
            break
    return estimate.said


@pytest.mark.parametrize("step_ends, trainer, expected", [
    # the paper's config on a CPU: one step of 535 s is reported after itself
    ([535.0], _fake_trainer(1000, max_epochs=50), "8.9 min per step, 6.2 days per epoch (1000 steps), about "
                                                  "309.6 days for the remaining 49999 steps"),
    # fast steps: after 3 steps, the first (loader start-up) left out of the rate
    ([5.0, 7.0, 9.0], _fake_trainer(10, max_epochs=2), "2.0 s per step, 20.0 s per epoch (10 steps), about 34.0 s "
                                                        "for the remaining 17 steps"),
    # a step budget (iteration-based methods) shorter than the epochs
    ([1.0, 2.0, 3.0], _fake_trainer(100, max_epochs=-1, max_steps=50), "1.0 s per step, 100.0 s per epoch "
                                                                        "(100 steps), about 47.0 s for the "
                                                                        "remaining 47 steps"),
    # an iterable without length: no epoch length to tell
    ([1.0, 2.0, 3.0], _fake_trainer(math.inf, max_epochs=3), "1.0 s per step"),
    # the last step: nothing remains to estimate
    ([30.0], _fake_trainer(1, max_epochs=1), "30.0 s per step, 30.0 s per epoch (1 step)"),
])
def test_time_estimate_after_the_first_steps(monkeypatch, step_ends, trainer, expected):
    assert _estimate(monkeypatch, step_ends, trainer) == expected


def test_time_estimate_is_said_once(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="slidr")
    trainer = _fake_trainer(10, max_epochs=1)
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    monkeypatch.setattr(engine_trainer.time, "perf_counter", lambda: next(clock))
    estimate = TimeEstimate()
    estimate.on_train_start(trainer, None)
    for step in range(6):
        trainer.global_step = step + 1
        estimate.on_train_batch_end(trainer, None, None, None, step)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time: ")]
    assert lines == ["time: 1.0 s per step, 10.0 s per epoch (10 steps), about 7.0 s for the remaining 7 steps"]


# --- configs sized for a GPU ------------------------------------------------------------------------------------------


def test_paper_configs_are_marked_for_a_gpu_and_cpu_configs_are_not():
    marks = {}
    for name in packaged_configs():
        cls = packaged_config_class(name)
        if cls in (PretrainConfig, DownstreamConfig):
            marks[name] = load_config(cls, name).trainer.intended_accelerator
    paper = {name for name in marks if "demo" not in name}  # every config not sized for the CPU demo
    assert {"pretrain/slidr_minkunet.yaml", "downstream/probe_nuscenes.yaml", "pretrain/scalr_minkunet.yaml",
            "downstream/finetune_nuscenes_5pct.yaml"} <= paper
    assert {name for name, mark in marks.items() if mark == "gpu"} == paper
    assert all(marks[name] != "gpu" for name in marks if "demo_cpu" in name)


def test_a_gpu_config_on_a_cpu_says_so_once(monkeypatch, caplog):
    import lightning as L

    import slidr.utils.log as log

    monkeypatch.setattr(log, "_said", set())
    caplog.set_level(logging.WARNING, logger="slidr")
    cpu = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    paper = load_config(PretrainConfig, "pretrain/slidr_minkunet.yaml").trainer
    for trainer_cfg in (paper, paper, load_config(PretrainConfig, "pretrain/demo_cpu.yaml").trainer,
                        PretrainConfig().trainer):
        warn_if_sized_for_another_device(trainer_cfg, cpu)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and re.search(r"sized for a GPU .* runs on the CPU here: steps may take minutes each",
                                        said[0])
    assert "pretrain/demo_cpu.yaml" in said[0]
