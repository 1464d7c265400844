"""Downstream training on small hand-made scans with a stand-in backbone (fast), plus the loss and bad input."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import slidr.methods.downstream as downstream
from slidr.config import DownstreamConfig, load_config, with_changes
from slidr.engine.trainer import evaluation_trainer
from slidr.errors import SlidrError
from slidr.methods.downstream import DownstreamModule, evaluate_confusion, run_downstream, segmentation_loss

NUM_CLASSES = 16  # nuScenes


class TinyBackbone(nn.Module):
    """Stand-in for the U-Net: a point-wise layer with batch norm, then ``final``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Linear(in_channels, 24)
        self.norm = nn.BatchNorm1d(24)
        self.final = nn.Linear(24, out_channels)

    def forward_features(self, x):
        return torch.relu(self.norm(self.body(x.feats)))

    def forward(self, x):
        return self.final(self.forward_features(x))


def make_scan(rng: np.random.Generator, classes: list[int], codes: np.ndarray, num_points: int = 300) -> dict:
    """A scan whose voxel features encode the class (separable), with an inverse map over its points."""
    num_voxels = num_points // 2
    voxel_labels = rng.choice(classes, size=num_voxels)
    voxel_labels[:5] = 0  # some unlabelled voxels
    coords = rng.permutation(40 * 40 * 8)[:num_voxels]
    voxel_coords = np.stack([coords // 320, (coords // 8) % 40, coords % 8], axis=1).astype(np.int32)
    inverse_map = np.concatenate([np.arange(num_voxels), rng.integers(0, num_voxels, num_points - num_voxels)])
    feats = codes[voxel_labels] + 0.05 * rng.normal(size=(num_voxels, codes.shape[1]))
    return {"voxel_coords": voxel_coords, "voxel_feats": feats.astype(np.float32), "inverse_map": inverse_map,
            "labels": voxel_labels[inverse_map], "voxel_labels": voxel_labels, "token": "t"}


def collate(samples: list[dict]) -> dict:
    coords, feats, inverse, labels, voxel_labels = [], [], [], [], []
    offset = 0
    for b, s in enumerate(samples):
        coords.append(np.concatenate([np.full((len(s["voxel_coords"]), 1), b, np.int32), s["voxel_coords"]], 1))
        feats.append(s["voxel_feats"])
        inverse.append(s["inverse_map"] + offset)
        labels.append(s["labels"])
        voxel_labels.append(s["voxel_labels"])
        offset += len(s["voxel_coords"])
    return {"voxel_coords": torch.from_numpy(np.concatenate(coords)),
            "voxel_feats": torch.from_numpy(np.concatenate(feats)),
            "inverse_map": torch.from_numpy(np.concatenate(inverse)),
            "labels": torch.from_numpy(np.concatenate(labels)),
            "voxel_labels": torch.from_numpy(np.concatenate(voxel_labels)), "batch_size": len(samples)}


@pytest.fixture
def tiny_world(monkeypatch):
    """Patch in the stand-in backbone and a dataset factory of separable scans; returns the config."""
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(NUM_CLASSES + 1, 6)).astype(np.float32) * 3
    classes = [1, 4, 7, 11, 15, 16]
    scans = {"train": [make_scan(rng, classes, codes) for _ in range(6)],
             "val": [make_scan(rng, classes, codes) for _ in range(3)]}

    def build(cfg, num_classes, weights=None, reset_head=True):
        torch.manual_seed(1)
        return TinyBackbone(6, num_classes), {"method": None}

    def factory(cfg, split, train):
        if not scans.get(split):
            raise SlidrError(f"split {split!r} of {cfg.data.index} has no samples")
        return scans[split], collate

    monkeypatch.setattr(downstream, "build_segmentation_model", build)
    cfg = load_config(DownstreamConfig, None, ["trainer.epochs=30", "trainer.batch_size=2", "trainer.accelerator=cpu",
                                               "optim.lr=0.5", "trainer.log_every_n_steps=1"])
    return cfg, factory


def test_linear_probe_on_separable_features_is_near_perfect(tiny_world, tmp_path):
    cfg, factory = tiny_world
    summary = run_downstream(cfg, tmp_path / "probe", dataset_factory=factory, enable_progress_bar=False)
    assert summary["cached_features"]
    assert summary["miou"] > 95.0
    present = [name for name, iou in summary["evaluation"]["per_class"].items() if iou is not None]
    assert len(present) == 6  # absent classes are n/a, not 100
    assert summary["epoch_losses"][-1] < summary["epoch_losses"][0]
    written = json.loads((tmp_path / "probe" / "evaluation.json").read_text())
    assert written["miou"] == summary["miou"]
    assert (tmp_path / "probe" / "model.pt").is_file()


def test_probe_freezes_backbone_and_batch_norm_statistics(tiny_world, tmp_path):
    cfg, factory = tiny_world
    # run the backbone every step: its weights and statistics must still not move
    cfg = with_changes(cfg, {"cache_features": False, "trainer.epochs": 2})
    before = {}

    original = DownstreamModule.__init__

    def spy(self, model, *args, **kwargs):
        before.update({k: v.clone() for k, v in model.state_dict().items()})
        original(self, model, *args, **kwargs)
        spy.model = model

    DownstreamModule.__init__ = spy
    try:
        run_downstream(cfg, tmp_path / "frozen", dataset_factory=factory, enable_progress_bar=False)
    finally:
        DownstreamModule.__init__ = original
    after = spy.model.state_dict()
    for key in before:
        if not key.startswith("final."):
            assert torch.equal(before[key], after[key]), key
    # the trained classifier (its feature standardisation folded in) is no longer the initial one
    initial = before.get("final.linear.weight", before.get("final.weight"))
    assert after["final.weight"].shape == initial.shape and not torch.equal(initial, after["final.weight"])


def _brute_force_confusion(model: nn.Module, scans: list[dict]) -> torch.Tensor:
    """Per scan, per original point: (true class, argmax class) counted in a plain loop (labels 0 skipped)."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with torch.no_grad():
        for scan in scans:
            voxels = SimpleNamespace(feats=torch.from_numpy(scan["voxel_feats"]))  # what TinyBackbone reads
            voxel_class = model(voxels).argmax(1).numpy()
            for point, label in enumerate(scan["labels"]):
                if label > 0:
                    counts[label - 1, voxel_class[scan["inverse_map"][point]]] += 1
    return torch.from_numpy(counts)


@pytest.mark.slow  # two spawned processes
def test_two_process_evaluation_equals_one_process_and_brute_force(tiny_world):
    """The test loop of 2 gloo processes (scans split 3 / 2, batches of 2) sums to the 1-process confusion matrix."""
    cfg, factory = tiny_world
    rng = np.random.default_rng(5)
    codes = rng.normal(size=(NUM_CLASSES + 1, 6)).astype(np.float32)
    scans = [make_scan(rng, [1, 2, 3, 5, 8, 13], codes) for _ in range(5)]
    torch.manual_seed(3)
    model = TinyBackbone(6, NUM_CLASSES).eval()
    expected = _brute_force_confusion(model, scans)
    assert expected.sum() == sum(int((scan["labels"] > 0).sum()) for scan in scans)
    confusions = {}
    for devices in (1, 2):
        run_cfg = load_config(DownstreamConfig, None, ["trainer.accelerator=cpu", f"trainer.devices={devices}",
                                                       "trainer.batch_size=2", "trainer.num_threads=1",
                                                       f"trainer.strategy={'ddp_spawn' if devices > 1 else 'auto'}"])
        module = DownstreamModule(model, run_cfg, NUM_CLASSES, False, eval_set=scans, eval_collate=collate)
        confusions[devices] = evaluate_confusion(evaluation_trainer(run_cfg.trainer, enable_progress_bar=False),
                                                 module)
    assert confusions[1].dtype == torch.int64
    assert torch.equal(confusions[1], expected)
    assert torch.equal(confusions[2], confusions[1])


def test_validation_during_training_logs_a_curve(tiny_world, tmp_path):
    cfg, factory = tiny_world
    cfg = dataclasses.replace(cfg, val_every_n_epochs=10)
    summary = run_downstream(cfg, tmp_path / "probe", dataset_factory=factory, enable_progress_bar=False)
    rows = (tmp_path / "probe" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, row.split(","))) for row in rows[1:]]
    curve = [(int(r["epoch"]), float(r["val_miou"])) for r in values if r.get("val_miou")]
    assert [epoch for epoch, _ in curve] == [9, 19, 29]  # every 10 of the 30 epochs
    assert curve[-1][1] > curve[0][1] - 1e-6 and curve[-1][1] > 90.0
    # the last validation saw the final classifier: the same score as the final evaluation (folded layer)
    assert curve[-1][1] == pytest.approx(summary["miou"], abs=0.5)


def test_finetune_uses_separate_learning_rates(tiny_world):
    cfg, factory = tiny_world
    cfg = with_changes(cfg, {"mode": "finetune", "optim.lr": 0.02, "optim.lr_head": 2.0})
    scans, _ = factory(cfg, "train", True)
    module = DownstreamModule(TinyBackbone(6, NUM_CLASSES), cfg, NUM_CLASSES, False, scans, collate)
    module.trainer = type("T", (), {"estimated_stepping_batches": 10, "max_steps": -1, "max_epochs": 5})()
    optimizer = module.configure_optimizers()["optimizer"]
    assert sorted(group["lr"] for group in optimizer.param_groups) == [0.02, 2.0]
    head = next(g for g in optimizer.param_groups if g["lr"] == 2.0)
    assert len(head["params"]) == 2  # final.weight and final.bias
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["dampening"] == 0.1
    random_module = DownstreamModule(TinyBackbone(6, NUM_CLASSES), cfg, NUM_CLASSES, True, scans, collate)
    random_module.trainer = module.trainer
    groups = random_module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [cfg.lr_random_init]


def test_finetune_runs_and_resume_refuses_to_overwrite(tiny_world, tmp_path):
    cfg, factory = tiny_world
    cfg = with_changes(cfg, {"mode": "finetune", "trainer.epochs": 2})
    summary = run_downstream(cfg, tmp_path / "ft", dataset_factory=factory, enable_progress_bar=False)
    assert not summary["cached_features"]
    assert (tmp_path / "ft" / "checkpoints").is_dir()
    with pytest.raises(SlidrError, match="already holds checkpoints"):
        run_downstream(cfg, tmp_path / "ft", dataset_factory=factory, enable_progress_bar=False)
    cfg = with_changes(cfg, {"trainer.epochs": 3})
    with pytest.raises(SlidrError, match=r"trainer.epochs: run 2, now 3.*--allow-changes"):
        run_downstream(cfg, tmp_path / "ft", resume=True, dataset_factory=factory, enable_progress_bar=False)
    resumed = run_downstream(cfg, tmp_path / "ft", resume=True, dataset_factory=factory, enable_progress_bar=False,
                             allow_changes=True)
    assert len(resumed["epoch_losses"]) == 3
    assert resumed["epoch_losses"][:2] == summary["epoch_losses"]
    recorded = json.loads((tmp_path / "ft" / "resume_changes.json").read_text())
    assert recorded[-1]["changes"] == {"trainer.epochs": {"run": 2, "now": 3}}


def test_empty_validation_split_is_an_error(tiny_world, tmp_path):
    cfg, factory = tiny_world
    cfg = with_changes(cfg, {"data.val_split": "nothing"})
    with pytest.raises(SlidrError, match="'nothing'.*no samples"):
        run_downstream(cfg, tmp_path / "empty", dataset_factory=factory, enable_progress_bar=False)


def test_loss_ignores_unlabelled_voxels():
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 3, 0, 2])
    loss = segmentation_loss(logits, labels, lovasz=False)
    expected = nn.functional.cross_entropy(logits[[1, 2, 4]], torch.tensor([0, 2, 1]))
    assert float(loss) == pytest.approx(float(expected))
    (grad,) = torch.autograd.grad(segmentation_loss(logits, labels, lovasz=True), logits)
    assert torch.all(grad[[0, 3]] == 0)
    zero = segmentation_loss(logits, torch.zeros(5, dtype=torch.long), lovasz=True)
    assert float(zero) == 0.0 and zero.requires_grad


# --- on the tiny synthetic world, with the real U-Net and datasets ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_index(tiny_nuscenes_world, tmp_path_factory):
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    path = tmp_path_factory.mktemp("downstream") / "index.npz"
    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", path)
    return path


def tiny_config(index, *overrides):
    return load_config(DownstreamConfig, None, [f"data.index={index}", "backbone.name=minkunet14_half",
                                                "trainer.epochs=1", "trainer.batch_size=3", "trainer.accelerator=cpu",
                                                *overrides])


def test_probe_on_tiny_world_evaluates_every_point(tiny_index, tmp_path):
    from slidr.data.index import load_index

    # two scenes give no val scene: evaluating on train is fine for a wiring test (no score is reported)
    cfg = tiny_config(tiny_index, "data.val_split=train")
    summary = run_downstream(cfg, tmp_path / "probe", enable_progress_bar=False)
    index = load_index(tiny_index)
    labels_total = 0
    from slidr.data.datasets import DownstreamDataset
    for sample in DownstreamDataset(index, "train", cfg.data):
        labels_total += int((sample["labels"] > 0).sum())
    assert summary["evaluation"]["num_points"] == labels_total  # every labelled original point, not voxels
    assert summary["train_scans"] == len(index.sample_indices("train"))


def test_empty_validation_split_of_real_index(tiny_index, tmp_path):
    from slidr.errors import DataError

    cfg = tiny_config(tiny_index)  # val of a two-scene world is empty
    with pytest.raises(DataError, match="'val' has no samples"):
        run_downstream(cfg, tmp_path / "empty", enable_progress_bar=False)


def test_checkpoint_of_other_architecture_or_voxels_is_refused(tiny_index, tmp_path):
    from slidr.engine.checkpoint import export_pretrained, save_atomic
    from slidr.methods.downstream import build_segmentation_model, resolve_backbone
    from slidr.models.unet import build_backbone

    cfg = tiny_config(tiny_index)
    other = load_config(DownstreamConfig, None, ["backbone.name=minkunet14"])
    network = build_backbone(resolve_backbone(other))
    path = export_pretrained(tmp_path / "pretrained.pt", network, None, other, "slidr")
    with pytest.raises(SlidrError, match="backbone.name is 'minkunet14_half' but .*pretrained.pt holds a network "
                                         "with name 'minkunet14'"):
        build_segmentation_model(cfg, NUM_CLASSES, str(path))
    save_atomic(network.state_dict(), tmp_path / "plain.pt")  # no recorded settings: the weights tell
    with pytest.raises(SlidrError, match="does not fit the model.*shape mismatch"):
        build_segmentation_model(cfg, NUM_CLASSES, str(tmp_path / "plain.pt"))
    same = export_pretrained(tmp_path / "same.pt", build_backbone(resolve_backbone(cfg)), None, cfg, "slidr")
    model, info = build_segmentation_model(cfg, NUM_CLASSES, str(same))
    assert info["skipped"] == ["final.weight", "final.bias"]  # 64-d pretraining head left out
    cfg = with_changes(cfg, {"data.voxel.size": 0.2})
    with pytest.raises(SlidrError, match="voxel settings.*size: pretrained 0.1 vs now 0.2"):
        build_segmentation_model(cfg, NUM_CLASSES, str(same))


def test_label_file_with_unknown_ids_is_refused(tiny_nuscenes_world, tmp_path):
    import shutil

    from slidr.data.index import load_index
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.errors import DataError
    from slidr.methods.downstream import make_dataset

    world = tmp_path / "world"
    shutil.copytree(tiny_nuscenes_world, world, ignore=shutil.ignore_patterns("CAM_*", "semantic", "preview"))
    prepare_nuscenes(world, "v1.0-trainval", tmp_path / "index.npz")
    index = load_index(tmp_path / "index.npz")
    first = index.sample_indices("train")[0]
    label_file = index.resolve(index.samples[int(first)]["lidarseg"])
    raw = np.fromfile(label_file, dtype=np.uint8)
    raw[:3] = 40  # not one of the 32 lidarseg categories
    raw.tofile(label_file)
    dataset, _ = make_dataset(tiny_config(tmp_path / "index.npz"), "train", False)
    with pytest.raises(DataError, match=r"unknown nuScenes lidarseg category indices \[40\]"):
        dataset[0]


def test_standardized_probe_folds_into_one_linear_layer():
    from torch import nn

    from slidr.methods.downstream import StandardizedLinear, feature_statistics

    torch.manual_seed(0)
    features = torch.randn(500, 6) * torch.tensor([1e-3, 2.0, 5.0, 1e-2, 1.0, 3.0]) + 0.1
    features[:, 3] = 7.0  # a constant channel must not divide by zero
    mean, std = feature_statistics(features.split(128))
    assert torch.allclose(mean, features.mean(0), atol=1e-5)
    assert torch.allclose(std[[0, 1, 2, 4, 5]], features.std(0, unbiased=False)[[0, 1, 2, 4, 5]], rtol=1e-4)
    assert std[3] == 1.0
    probe = StandardizedLinear(nn.Linear(6, 4), mean, std)
    standardized = (features - mean) / std
    assert torch.allclose(probe(features), probe.linear(standardized), atol=1e-5)
    assert torch.allclose(probe.folded()(features), probe(features), atol=1e-4)


# --- which scans a run trains on, what evaluation leaves out, which network it builds (issue "Trust") ------------


@pytest.fixture
def stub_network(monkeypatch):
    """The real datasets with a stand-in network on the voxel features (intensity): fast runs."""

    def build(cfg, num_classes, weights=None, reset_head=True):
        torch.manual_seed(1)
        return TinyBackbone(1, num_classes), {"method": None}

    monkeypatch.setattr(downstream, "build_segmentation_model", build)


@pytest.mark.slow
def test_every_downstream_run_trains_on_the_scans_its_config_names(tiny_index, tmp_path, stub_network):
    from slidr.data.index import load_index
    from slidr.methods.downstream import tokens_digest

    index = load_index(tiny_index)
    tokens = index.samples.column("token")
    runs = {"probe on cached features": ["mode=probe"],
            "probe without cache": ["mode=probe", "cache_features=false"],
            "finetune": ["mode=finetune", "data.augment.enabled=true"]}
    for fraction in (1.0, 0.5):
        expected = [tokens[int(i)] for i in index.sample_indices("train", fraction)]
        assert len(expected) == (6 if fraction == 1.0 else 3)
        for name, overrides in runs.items():
            cfg = tiny_config(tiny_index, "data.val_split=train", f"data.label_fraction={fraction}", *overrides)
            summary = run_downstream(cfg, tmp_path / f"{name}-{fraction}", enable_progress_bar=False)
            assert summary["label_fraction"] == fraction
            assert summary["train_scans"] == len(expected), (name, fraction)
            assert summary["train_tokens_sha1"] == tokens_digest(expected), (name, fraction)
            assert summary["val_scans"] == 6  # evaluation takes every scan of its split


def test_non_finite_points_are_counted_and_said_once(tiny_nuscenes_world, tmp_path, stub_network, capsys, caplog):
    import shutil

    from slidr.data.index import load_index
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.methods.downstream import MODEL_NAME, evaluate_saved_model

    world = tmp_path / "world"
    shutil.copytree(tiny_nuscenes_world, world, ignore=shutil.ignore_patterns("CAM_*", "semantic", "preview"))
    prepare_nuscenes(world, "v1.0-trainval", tmp_path / "index.npz")
    index = load_index(tmp_path / "index.npz")
    positions = index.sample_indices("train")
    damage = {1: ("x", np.nan, slice(0, 40)), 3: ("y", np.inf, slice(100, 107)), 4: ("z", -np.inf, slice(5, 6)),
              5: ("x", np.nan, slice(None))}  # item 5: a whole scan of NaN
    dropped, files = 0, {}
    for item, (axis, value, rows) in damage.items():
        path = index.resolve(index.samples[int(positions[item])]["lidar"])
        points = np.fromfile(path, np.float32).reshape(-1, 5)
        points[rows, "xyz".index(axis)] = value
        points.tofile(path)
        dropped += len(points[rows])
        files[item] = path
    cfg = tiny_config(tmp_path / "index.npz", "data.val_split=train", "trainer.batch_size=2")
    capsys.readouterr()
    summary = run_downstream(cfg, tmp_path / "probe", enable_progress_bar=False)
    evaluation = summary["evaluation"]
    assert evaluation["nonfinite_points"] == dropped and evaluation["nonfinite_scans"] == 4
    # slidr's own handler (once setup_logging ran in this process) and pytest's capture may both see the record:
    # the event is said once in each place that saw it
    places = [[line for line in said.splitlines() if "NaN or infinite" in line]
              for said in (capsys.readouterr().err, caplog.text)]
    assert max(len(lines) for lines in places) == 1
    warnings = next(lines for lines in places if lines)
    assert f"{dropped} points" in warnings[0] and "4 of 6 scans" in warnings[0] and str(files[1]) in warnings[0]
    one_by_one = with_changes(cfg, {"trainer.batch_size": 1})  # the all-NaN scan is a batch without any point
    again = evaluate_saved_model(tmp_path / "probe" / MODEL_NAME, one_by_one, "train", enable_progress_bar=False)
    assert again["nonfinite_points"] == dropped and again["num_points"] == evaluation["num_points"]
    for mode in ("probe", "finetune"):  # training batches without any point are skipped, not an error
        trained = run_downstream(with_changes(one_by_one, {"mode": mode}), tmp_path / f"{mode}-1",
                                 enable_progress_bar=False)
        assert trained["evaluation"]["nonfinite_points"] == dropped and trained["train_scans"] == 6
    clean = evaluate_saved_model(tmp_path / "probe" / MODEL_NAME, tiny_config(tiny_index_path(tiny_nuscenes_world,
                                 tmp_path)), "train", enable_progress_bar=False)
    assert clean["nonfinite_points"] == 0 and clean["nonfinite_scans"] == 0
    assert clean["num_points"] > evaluation["num_points"]


def tiny_index_path(world, tmp_path):
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    path = tmp_path / "clean_index.npz"
    if not path.is_file():
        prepare_nuscenes(world, "v1.0-trainval", path)
    return path


def test_the_backbone_comes_from_the_pretrained_file(tmp_path):
    from slidr.config import BackboneConfig
    from slidr.engine.checkpoint import export_pretrained, save_atomic
    from slidr.methods.downstream import resolve_backbone
    from slidr.models.unet import build_backbone

    half = build_backbone(BackboneConfig(name="minkunet14_half"))
    pretrained = export_pretrained(tmp_path / "pretrained.pt", half, None,
                                   {"method": "slidr", "backbone": {"name": "minkunet14_half", "in_channels": 1}},
                                   "slidr")
    probe_model = export_pretrained(tmp_path / "model.pt", half, None,
                                    {"mode": "probe", "backbone": {"name": "minkunet14_half", "in_channels": 1}},
                                    "probe")
    save_atomic(half.state_dict(), tmp_path / "plain.pt")
    unset = DownstreamConfig()
    assert resolve_backbone(unset).name == "minkunet34"  # random init: the class default
    for path in (pretrained, probe_model):
        resolved = resolve_backbone(unset, path)
        assert (resolved.name, resolved.in_channels, resolved.normalize_output) == ("minkunet14_half", 1, False)
        assert resolve_backbone(with_changes(unset, {"backbone.name": "minkunet14_half"}), path).name == \
            "minkunet14_half"
    assert resolve_backbone(unset, tmp_path / "plain.pt").name == "minkunet34"  # nothing recorded: the config's
    cases = [({"backbone.name": "minkunet34"}, r"backbone.name is 'minkunet34' but .*pretrained.pt holds a network "
                                               r"with name 'minkunet14_half'.*backbone.name=minkunet14_half"),
             ({"backbone.in_channels": 4}, r"backbone.in_channels is 4 but .* in_channels 1"),
             ({"backbone.name": "minkunet18"}, r"'minkunet18' but .*'minkunet14_half'")]
    for changes, message in cases:
        with pytest.raises(SlidrError, match=message):
            resolve_backbone(with_changes(unset, changes), pretrained)
    # the packaged paper config names MinkUNet34: with the demo's half-width network, both are named
    paper = load_config(DownstreamConfig, "downstream/probe_nuscenes.yaml")
    with pytest.raises(SlidrError, match="'minkunet34' but .*'minkunet14_half'"):
        resolve_backbone(paper, pretrained)
    cpu = load_config(DownstreamConfig, "downstream/finetune_demo_cpu.yaml")
    assert cpu.backbone.name is None and resolve_backbone(cpu, pretrained).name == "minkunet14_half"
