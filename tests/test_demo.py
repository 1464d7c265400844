"""Wiring of ``slidr demo`` with its long stages replaced by stand-ins (the real run is minutes long)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidr.errors import SlidrError

import slidr.demo as demo
from slidr.config import DemoConfig, load_config
from slidr.methods.metrics import summarize
from slidr.data.classes import NUSCENES_CLASSES


def test_demo_writes_results_json_and_table(tmp_path, monkeypatch, capsys):
    calls = []
    index = tmp_path / "world" / "index.npz"

    def fake_pretrain(cfg, run_dir):
        calls.append(("pretrain", cfg.method, cfg.data.index, cfg.data.train_split, cfg.trainer.epochs))
        return run_dir / "pretrained.pt", {"initial_loss": 8.0, "final_loss": 6.0, "epoch_losses": [7.0, 6.0],
                                           "epochs": 2, "scans_per_s": 1.0}

    def fake_probe(cfg, run_dir):
        calls.append(("probe", cfg.pretrained, cfg.data.train_split, cfg.data.val_split, cfg.backbone.name))
        confusion = np.diag(np.arange(1, 17))
        confusion[0, 1] = 5 if cfg.pretrained is None else 0
        return summarize(confusion, NUSCENES_CLASSES)

    monkeypatch.setattr(demo, "prepare_world", lambda cfg: index)
    monkeypatch.setattr(demo, "compute_superpixels", lambda *args: {"slic_150": {"images": 6}})
    monkeypatch.setattr(demo, "pretrain", fake_pretrain)
    monkeypatch.setattr(demo, "probe", fake_probe)
    monkeypatch.setattr(demo, "run_analysis", lambda *args: {"files": {}, "results": {}})
    cfg = load_config(DemoConfig, demo.DEFAULT_CONFIG, ["pretrain.*.trainer.epochs=1"])
    results = demo.run_demo(tmp_path / "out", cfg)

    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(written["linear_probe"]) == {"slidr", "ppkt", "random"}
    assert written["linear_probe"]["slidr"]["miou"] == 100.0
    assert written["linear_probe"]["random"]["miou"] < 100.0
    assert set(written["linear_probe"]["random"]["per_class"]) == set(NUSCENES_CLASSES)
    assert written["wall_s"] == results["wall_s"] >= 0
    assert "randomly initialised" in written["teacher"]["weights"]
    # the demo says which probe options it uses (not the paper's protocol, which probe_nuscenes.yaml follows)
    assert written["probe_protocol"] == ("no augmentation, frozen features cached; features standardised before the "
                                         "linear layer; unit input features (not the paper's probe protocol: "
                                         "downstream/probe_nuscenes.yaml)")
    assert "features standardised" in (tmp_path / "out" / "linear_probe.md").read_text()
    # pretraining and probe training on the training split, scores on the evaluation split only
    assert ("pretrain", "slidr", str(index), "train", 1) in calls
    probes = [c for c in calls if c[0] == "probe"]
    assert [c[1] for c in probes] == [str(tmp_path / "out" / "pretrain-slidr" / "pretrained.pt"),
                                      str(tmp_path / "out" / "pretrain-ppkt" / "pretrained.pt"), None]
    assert all(c[2:4] == ("train", "val") for c in probes)
    for name in ("linear_probe.md", "linear_probe.json", "linear_probe_per_class.png", "pretraining_loss.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| SLidR | 100.0 |" in printed and str((tmp_path / "out").resolve()) in printed
    assert f"linear probing: {written['probe_protocol']}" in printed
    paper = load_config(demo.DownstreamConfig, "downstream/probe_nuscenes")
    assert demo.probe_protocol(paper) == ("training scans augmented (rotation, flips); raw features; release input "
                                          "features")


def test_a_world_generated_with_other_settings_is_not_reused(tmp_path):
    from slidr.config import DemoConfig
    from slidr.demo import prepare_world

    world = tmp_path / "world"
    world.mkdir()
    (world / "synth_summary.json").write_text(
        '{"scenes": 3, "frames_per_scene": 10, "image_size": [480, 270], "seed": 0}')
    (world / "index.npz").write_text("{}")
    with pytest.raises(SlidrError, match=r"scenes 3 \(wanted 10\)"):
        prepare_world(DemoConfig(world=str(world)))
