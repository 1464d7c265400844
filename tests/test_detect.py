"""`slidr detect`: detection samples (boxes move with augmented points), batches, the Lightning module (loss falls,
evaluation equals an offline kitti_ap, 2 processes equal 1), the commands end to end on the tiny synthetic world,
the table runner and the learning-rate search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from slidr.analysis import detection_experiment as experiment
from slidr.cli.main import main
from slidr.config import DetectionAugmentConfig, DetectionConfig, VoxelConfig, load_config, to_dict, with_changes
from slidr.data import boxes as B
from slidr.data.detection import (
    DetectionDataset,
    SceneTransform,
    class_indices,
    collate_detection,
    draw_scene_transform,
    transform_scene,
)
from slidr.engine.checkpoint import export_pretrained, load_backbone
from slidr.engine.trainer import evaluation_trainer
from slidr.errors import ConfigError, DataError, SlidrError
from slidr.methods.detect import (
    DetectionModule,
    build_detection_model,
    decode_batch,
    evaluate_detector,
    frame_objects,
    load_detector,
)
from slidr.methods.detection import encode_boxes
from slidr.methods.detection_eval import kitti_ap, read_kitti_objects
from slidr.models.detection import BevGrid
from slidr.models.sparse import SparseTensor
from test_sparse import one_thread  # noqa: F401 - autouse fixture: one torch thread

CLASSES = ["Car", "Pedestrian"]
# a smaller BEV range than the demo config's (faster); the tiny world's labelled objects are within 60 m
FAST = ["head.point_range=[0.0, -32.0, -3.0, 51.2, 32.0, 1.0]", "trainer.batch_size=2", "trainer.num_threads=1",
        "trainer.log_every_n_steps=1"]


def demo_config(index: Path, *overrides: str) -> DetectionConfig:
    return load_config(DetectionConfig, "detection/detect_demo_cpu.yaml",
                       [f"data.index={index}", "data.val_split=train", *FAST, *overrides])


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    return np.column_stack([rng.uniform(-30, 30, (count, 2)), rng.uniform(-2, 0, count), rng.uniform(0.5, 5, count),
                            rng.uniform(0.4, 2, count), rng.uniform(1, 2.5, count), rng.uniform(-np.pi, np.pi, count)])


# --------------------------------------------------------------------------------------------------------------
# Augmentations and samples
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", [SceneTransform(True, 0.0, 1.0), SceneTransform(False, 0.7, 1.0),
                                       SceneTransform(False, 0.0, 1.05), SceneTransform(True, -2.9, 0.93)])
def test_transform_moves_boxes_with_their_points(transform):
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 12)
    # 40 points strictly inside each box, and points all around
    inner = []
    for box in boxes:
        local = rng.uniform(-0.49, 0.49, (40, 3)) * box[3:6]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        inner.append(np.column_stack([cos * local[:, 0] - sin * local[:, 1], sin * local[:, 0] + cos * local[:, 1],
                                      local[:, 2]]) + box[:3])
    points = np.concatenate(inner + [rng.uniform(-35, 35, (400, 3))])
    before = B.points_in_boxes_mask(points, boxes)
    assert (before.sum(1) >= 40).all()
    moved_points, moved = transform_scene(points, boxes, transform)
    np.testing.assert_array_equal(B.points_in_boxes_mask(moved_points, moved), before)
    # the boxes' corners are the transformed corners (as sets: a mirror swaps left and right)
    matrix = np.diag([1.0, -1.0 if transform.flip else 1.0, 1.0])
    cos, sin = math.cos(transform.angle), math.sin(transform.angle)
    matrix = transform.scale * np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]) @ matrix
    for original, new in zip(B.box_corners(boxes), B.box_corners(moved)):
        expected = original @ matrix.T
        distances = np.linalg.norm(expected[:, None] - new[None], axis=-1)
        assert distances.min(axis=1).max() < 1e-4
    assert np.all((moved[:, 6] >= -np.pi) & (moved[:, 6] < np.pi))


def test_yaw_conventions_of_the_augmentations():
    box = np.array([[10.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.5]])
    _, flipped = transform_scene(np.zeros((0, 3)), box, SceneTransform(flip=True))
    np.testing.assert_allclose(flipped, [[10.0, -2.0, -1.0, 4.0, 1.8, 1.5, -0.5]])
    _, turned = transform_scene(np.zeros((0, 3)), box, SceneTransform(angle=math.pi / 2))
    np.testing.assert_allclose(turned, [[-2.0, 10.0, -1.0, 4.0, 1.8, 1.5, 0.5 + math.pi / 2]], atol=1e-12)
    _, scaled = transform_scene(np.zeros((0, 3)), box, SceneTransform(scale=1.1))
    np.testing.assert_allclose(scaled[0, :6], box[0, :6] * 1.1)
    # draws stay in their ranges; disabled: the identity
    cfg = DetectionAugmentConfig(flip_prob=0.5, rotation_deg=45, scale_range=[0.95, 1.05])
    draws = [draw_scene_transform(np.random.default_rng(i), cfg) for i in range(200)]
    assert 60 < sum(d.flip for d in draws) < 140
    assert max(abs(d.angle) for d in draws) <= math.pi / 4 and min(d.scale for d in draws) >= 0.95
    assert draw_scene_transform(np.random.default_rng(0), DetectionAugmentConfig(enabled=False)) == SceneTransform()
    with pytest.raises(ConfigError, match="scale_range"):
        DetectionAugmentConfig(scale_range=[1.1, 0.9])


def test_class_indices():
    np.testing.assert_array_equal(class_indices(["Car", "van", "pedestrian", "DontCare"], CLASSES), [0, -1, 1, -1])


def _members(sample: dict) -> np.ndarray:
    return B.points_in_boxes_mask(sample["points"], sample["boxes"])


def test_detection_samples_of_the_synthetic_world(tiny_kitti_object_index, tiny_kitti_object_world):
    cfg = demo_config(tiny_kitti_object_index)
    plain = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES)
    augmented = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES, train=True, augment=cfg.augment)
    whole = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES, crop_to_image=False)
    assert len(plain) == 6
    labelled = 0
    for item in range(len(plain)):
        sample = plain[item]
        frame = f"{item:06d}"
        # the crop keeps exactly the points that P2 @ R0_rect @ Tr_velo_to_cam puts inside image_2
        calibration = B.read_kitti_calibration(tiny_kitti_object_world / "training" / "calib" / f"{frame}.txt")
        rect = B.kitti_velo_to_rect(calibration["R0_rect"], calibration["Tr_velo_to_cam"])
        uvw = (whole[item]["points"][:, :3] @ rect[:3, :3].T + rect[:3, 3]) @ calibration["P2"][:, :3].T \
            + calibration["P2"][:, 3]
        width, height = sample["image_size"]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        seen = (uvw[:, 2] > 0) & (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)
        np.testing.assert_array_equal(sample["points"], whole[item]["points"][seen])
        np.testing.assert_allclose(sample["lidar_to_camera"], rect)
        np.testing.assert_allclose(sample["projection"], calibration["P2"])
        # voxel fields are consistent
        assert sample["voxel_feats"].shape == (len(sample["voxel_coords"]), 1)
        assert sample["inverse_map"].max() == len(sample["voxel_coords"]) - 1
        # boxes, labels and the ground truth are the label file's
        labels = B.read_kitti_labels(tiny_kitti_object_world / "training" / "label_2" / f"{frame}.txt")
        care = [name != "DontCare" for name in labels.type]
        assert list(sample["box_names"]) == [n for n, c in zip(labels.type, care) if c]
        np.testing.assert_array_equal(sample["box_labels"], class_indices(sample["box_names"], CLASSES))
        assert sample["ground_truth"].type == [n for n, c in zip(labels.type, care) if c] + \
            ["DontCare"] * (len(care) - sum(care))
        # augmented: the same points (same rows), moved with their boxes
        moved = augmented[item]
        assert not np.allclose(moved["points"][:, :3], sample["points"][:, :3])
        np.testing.assert_array_equal(moved["points"][:, 3], sample["points"][:, 3])
        np.testing.assert_array_equal(_members(moved), _members(sample))
        labelled += int((_members(sample).sum(1) > 0).sum())
    assert labelled > 20
    # training label fraction: every k-th frame; evaluation keeps all
    half = with_changes(cfg, {"data.label_fraction": 0.5})
    assert [s["token"] for s in DetectionDataset(half.data.index, "train", half.data, CLASSES, train=True)] == \
        [f"training/{i:06d}" for i in (0, 2, 4)]
    assert len(DetectionDataset(half.data.index, "train", half.data, CLASSES)) == 6


def test_collate_offsets_and_keeps_frames(tiny_kitti_object_index):
    cfg = demo_config(tiny_kitti_object_index)
    dataset = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES)
    samples = [dataset[1], dataset[4]]
    batch = collate_detection(samples)
    voxels = [len(s["voxel_coords"]) for s in samples]
    assert batch["batch_size"] == 2 and batch["voxel_coords"].shape == (sum(voxels), 4)
    np.testing.assert_array_equal(batch["voxel_coords"][voxels[0]:, 0].numpy(), 1)
    np.testing.assert_array_equal(batch["inverse_map"][len(samples[0]["points"]):].numpy(),
                                  samples[1]["inverse_map"] + voxels[0])
    assert [b.shape for b in batch["boxes"]] == [(len(s["boxes"]), 7) for s in samples]
    assert batch["boxes"][0].dtype == torch.float32 and batch["box_labels"][1].dtype == torch.int64
    assert [f["item"] for f in batch["frames"]] == [1, 4] and batch["tokens"] == ["training/000001", "training/000004"]


def test_real_kitti_frames_keep_their_points_in_their_boxes(realdata, tmp_path):
    """The real KITTI object frames, prepared and loaded as detection samples: each car and pedestrian box holds
    its lidar points after the camera crop, and keeps exactly them through the augmentations."""
    from slidr.data.prepare_kitti_object import prepare_kitti_object

    root = realdata / "kitti_object_vis" / "data" / "object"
    if not (root / "training" / "label_2").is_dir():
        pytest.skip(f"{root} has no training/label_2")
    prepare_kitti_object(root, tmp_path / "index.npz")
    cfg = load_config(DetectionConfig, "detection/detect_kitti.yaml",
                      [f"data.index={tmp_path / 'index.npz'}", "data.label_fraction=1"])
    plain = DetectionDataset(cfg.data.index, "train", cfg.data, cfg.head.classes)
    augmented = DetectionDataset(cfg.data.index, "train", cfg.data, cfg.head.classes, train=True,
                                 augment=cfg.augment)
    counted = {}
    for item in range(len(plain)):
        sample, moved = plain[item], augmented[item]
        members = _members(sample)
        for k, name in enumerate(sample["box_names"]):
            counted[f"{sample['token']} {name} {k}"] = int(members[k].sum())
            if name in ("Car", "Pedestrian"):
                assert members[k].sum() >= 5, (sample["token"], name)
        np.testing.assert_array_equal(_members(moved), members)
        truth = read_kitti_objects(root / "training" / "label_2" / f"{item:06d}.txt")
        assert sorted(sample["ground_truth"].type) == sorted(truth.names.tolist())
    print("points per labelled box after the camera crop:", counted)
    assert sum(" Car " in key for key in counted) == 2


# --------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_step_loss_falls_and_learning_rates_are_separate(tiny_kitti_object_index):
    cfg = demo_config(tiny_kitti_object_index, "optim.lr_head=0.01")
    torch.manual_seed(0)
    detector, info = build_detection_model(cfg)
    assert info["method"] is None
    dataset = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES)
    module = DetectionModule(detector, cfg, dataset, collate_detection)
    batch = collate_detection([dataset[0], dataset[3]])
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, stats = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert stats["objects"] > 5 and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    module.trainer = type("T", (), {"estimated_stepping_batches": 10, "max_steps": -1, "max_epochs": 5})()
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [0.003, 0.01]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(p.numel() for p in detector.head.parameters())


def test_pretrained_backbone_is_loaded_and_voxels_are_checked(tiny_kitti_object_index, tmp_path):
    cfg = demo_config(tiny_kitti_object_index)
    source, _ = build_detection_model(cfg)
    with torch.no_grad():
        for parameter in source.model_points.parameters():
            parameter.add_(1.0)
    path = export_pretrained(tmp_path / "pretrained.pt", source.model_points, None,
                             {"data": {"voxel": to_dict(cfg.data.voxel)}}, method="slidr")
    detector, info = build_detection_model(cfg, str(path))
    assert info["method"] == "slidr"
    for key, value in source.model_points.state_dict().items():
        assert torch.equal(detector.model_points.state_dict()[key], value), key
    other = with_changes(cfg, {"data.voxel": VoxelConfig(mode="cartesian", size=0.05)})
    with pytest.raises(SlidrError, match="other voxel settings"):
        build_detection_model(other, str(path))
    with pytest.raises(ConfigError, match="data.dataset must be kitti_object"):
        load_config(DetectionConfig, overrides=["data.dataset=nuscenes"])
    with pytest.raises(ConfigError, match="detection augmentations are augment"):
        load_config(DetectionConfig, overrides=["data.augment.enabled=true"])


class FrameOracle(nn.Module):
    """Stands in for the detector in evaluation: for a scan it recognises by its number of points, maps whose
    decoding gives chosen boxes (lidar frame), classes and scores."""

    def __init__(self, answers: dict, grid: BevGrid, num_classes: int):
        super().__init__()
        self.answers = answers
        self.grid = grid
        self.num_classes = num_classes
        self.unused = nn.Linear(1, 1)  # a parameter, as Lightning expects of a module

    def forward(self, voxels: SparseTensor, points, inverse_map, point_batch, batch_size):
        heatmap = torch.full((batch_size, self.num_classes, self.grid.rows, self.grid.cols), -30.0)
        regression = torch.zeros(batch_size, 8, self.grid.rows, self.grid.cols)
        for b in range(batch_size):
            boxes, labels, scores = self.answers[int((point_batch == b).sum())]
            row, col, inside, code = encode_boxes(torch.as_tensor(boxes, dtype=torch.float64), self.grid)
            for k in np.flatnonzero(inside.numpy()):
                heatmap[b, labels[k], row[k], col[k]] = math.log(scores[k] / (1 - scores[k]))
                regression[b, :, row[k], col[k]] = code[k].float()
        return {"heatmap": heatmap, "regression": regression}


def oracle_answers(dataset: DetectionDataset, grid: BevGrid, seed: int = 0) -> dict:
    """Per scan (keyed by its point count): its targets jittered, some missed, a few false positives."""
    rng = np.random.default_rng(seed)
    answers = {}
    for item in range(len(dataset)):
        sample = dataset[item]
        keep = sample["box_labels"] >= 0
        boxes, labels = sample["boxes"][keep].copy(), sample["box_labels"][keep]
        boxes[:, :2] += rng.normal(0, 0.04, (len(boxes), 2))
        boxes[:, 6] += rng.normal(0, 0.03, len(boxes))
        found = rng.random(len(boxes)) < 0.8
        extra = random_boxes(rng, 3)
        extra[:, 0] = rng.uniform(5, 45, 3)
        extra[:, 3:6] = [3.9, 1.6, 1.5]
        all_boxes = np.concatenate([boxes[found], extra])
        all_labels = np.concatenate([labels[found], rng.integers(0, 2, 3)])
        scores = rng.uniform(0.15, 0.95, len(all_boxes))
        # one object per cell (the oracle's maps have one box per cell)
        row, col, _, _ = encode_boxes(torch.as_tensor(all_boxes), grid)
        _, first = np.unique(row.numpy() * grid.cols + col.numpy(), return_index=True)
        answers[len(sample["points"])] = (all_boxes[first], all_labels[first], scores[first])
    assert len(answers) == len(dataset)  # the point counts tell the scans apart
    return answers


@pytest.fixture(scope="module")
def oracle_evaluation(tiny_kitti_object_index, tiny_kitti_object_world):
    """The oracle's detections on the tiny world and their kitti_ap computed offline, one frame at a time, with the
    ground truth read from the label_2 files."""
    cfg = demo_config(tiny_kitti_object_index, "trainer.accelerator=cpu")
    dataset = DetectionDataset(cfg.data.index, "train", cfg.data, CLASSES)
    grid = BevGrid.from_config(cfg.head)
    oracle = FrameOracle(oracle_answers(dataset, grid), grid, len(CLASSES))
    gts, dets = [], []
    for item in range(len(dataset)):
        batch = collate_detection([dataset[item]])
        outputs = oracle(None, batch["points"], batch["inverse_map"], batch["point_batch"], 1)
        dets.append(frame_objects(decode_batch(outputs, oracle, cfg)[0], batch["frames"][0], cfg))
        gts.append(read_kitti_objects(tiny_kitti_object_world / "training" / "label_2" / f"{item:06d}.txt"))
    expected = kitti_ap(gts, dets, classes=CLASSES, metrics=("bbox", "bev", "3d", "aos"))
    # far from 0 and from 100 (misses, false positives; AP|R40 is capped by the few ground truths)
    assert sum(len(d) for d in dets) > 15 and 10 < expected["ap"]["bev"]["Pedestrian"]["moderate"] < 40
    return cfg, dataset, oracle, expected


def lightning_evaluation(cfg, dataset, oracle, devices: int) -> dict:
    run_cfg = with_changes(cfg, {"trainer.devices": devices, "trainer.batch_size": 2,
                                 "trainer.strategy": "ddp_spawn" if devices > 1 else "auto"})
    module = DetectionModule(oracle, run_cfg, eval_set=dataset, eval_collate=collate_detection)
    return evaluate_detector(evaluation_trainer(run_cfg.trainer, enable_progress_bar=False), module)


def assert_same_evaluation(result: dict, expected: dict) -> None:
    assert result["ap"] == expected["ap"] and result["num_gt"] == expected["num_gt"]
    assert result["num_detections"] == expected["num_detections"] and result["num_frames"] == 6


def test_evaluation_in_lightning_equals_offline_kitti_ap(oracle_evaluation):
    cfg, dataset, oracle, expected = oracle_evaluation
    assert_same_evaluation(lightning_evaluation(cfg, dataset, oracle, 1), expected)


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(oracle_evaluation):
    """2 gloo processes (frames 3 / 3, batches of 2): the gathered frames give the offline evaluation exactly."""
    cfg, dataset, oracle, expected = oracle_evaluation
    assert_same_evaluation(lightning_evaluation(cfg, dataset, oracle, 2), expected)


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detect_run(tiny_kitti_object_index, tmp_path_factory):
    """One `slidr detect` run on the tiny world (2 steps), shared by the tests of its outputs."""
    out = tmp_path_factory.mktemp("detect") / "run"
    code = main(["detect", "--config", "detection/detect_demo_cpu.yaml", "--index", str(tiny_kitti_object_index),
                 "--val-split", "train", "--out", str(out), "trainer.epochs=1", "trainer.limit_train_batches=2",
                 "val_every_n_epochs=1", "pictures=2", *FAST])
    assert code == 0
    return out


def test_detect_command_writes_its_run_folder(detect_run, capsys):
    for name in ("config.yaml", "model.pt", "evaluation.json", "summary.json", "detection.md", "detection.json",
                 "detection_ap.png"):
        assert (detect_run / name).is_file(), name
    assert sorted(p.name for p in (detect_run / "predictions").iterdir()) == [f"{i:06d}.txt" for i in range(6)]
    evaluation = json.loads((detect_run / "evaluation.json").read_text())
    assert evaluation["classes"] == CLASSES and evaluation["split"] == "train" and evaluation["num_frames"] == 6
    summary = json.loads((detect_run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_frames"] == 6 and summary["pretrained"] is None
    assert "3D AP|R40" in (detect_run / "detection.md").read_text()
    # validation during training logged the moderate mAP (the same frames: the same numbers as the final test)
    rows = (detect_run / "logs" / "metrics.csv").read_text().splitlines()
    logged = [dict(zip(rows[0].split(","), row.split(","))) for row in rows[1:]]
    validated = [float(row["val_map_bev"]) for row in logged if row.get("val_map_bev")]
    assert validated == [pytest.approx(evaluation["map"]["bev"]["moderate"])]
    # model.pt: the backbone loads as any pretrained file, the whole detector back as it was
    cfg = load_config(DetectionConfig, detect_run / "config.yaml")
    fresh, _ = build_detection_model(cfg)
    assert load_backbone(detect_run / "model.pt", fresh.model_points, cfg.data.voxel)["method"] == "detect"
    detector, saved_cfg = load_detector(detect_run / "model.pt")
    assert saved_cfg == cfg and not detector.training
    code = main(["detect", "--config", str(detect_run / "config.yaml"), "--out", str(detect_run)])
    assert code == 1 and "already holds checkpoints" in capsys.readouterr().err  # a runtime refusal (exit 1)


def test_detect_pictures_are_written(detect_run):
    pictures = sorted((detect_run / "pictures").glob("*.png"))
    assert [p.name for p in pictures] == ["000000.png", "000005.png"]
    with Image.open(pictures[0]) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > 800 and height > 300
    # the ground-truth boxes are drawn (green pixels)
    green = (np.abs(pixels.astype(int) - [0x1a, 0x98, 0x50]).sum(-1) < 40).sum()
    assert green > 100


@pytest.mark.slow
def test_detect_table_smoke(tiny_kitti_object_index, tmp_path):
    cfg = demo_config(tiny_kitti_object_index)
    backbone, _ = build_detection_model(cfg)
    pretrained = export_pretrained(tmp_path / "slidr.pt", backbone.model_points, None,
                                   {"data": {"voxel": to_dict(cfg.data.voxel)}}, method="slidr")
    out = tmp_path / "table"
    code = main(["detect-table", "--smoke", "--index", str(tiny_kitti_object_index), "--no-random",
                 "--pretrained-slidr", str(pretrained), "--fractions", "0.5", "--seeds", "1", "--out", str(out),
                 *FAST])
    assert code == 0
    table = json.loads((out / "detection_table.json").read_text())
    assert table["pretrainings"] == ["slidr"] and table["fractions"] == [0.5]
    assert table["cells"]["slidr"]["50%"]["train_frames"] == [3]
    assert (out / "runs" / "slidr_50pct_seed0" / "pictures" / "000000.png").is_file()
    assert (out / "detection_table.png").is_file() and "| SLidR |" in (out / "detection_table.md").read_text()


def fake_summary(cfg: DetectionConfig, value: float) -> dict:
    classes = cfg.head.classes
    ap = {m: {c: {"easy": value, "moderate": value, "hard": value} for c in classes} for m in ("3d", "bev")}
    return {"wall_s": 1.0, "train_frames": 7,
            "evaluation": {"ap": ap, "map": {m: {"moderate": value} for m in ("3d", "bev")},
                           "map_moderate": {"3d": value, "bev": value}, "classes": classes, "recall_positions": 40,
                           "notes": []}}


def test_table_runner_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    base = load_config(DetectionConfig, "detection/detect_demo_cpu.yaml")
    calls = []

    def run(cfg, folder, resume=False, name=None, enable_progress_bar=False):
        calls.append((Path(folder).name, resume, cfg.data.label_fraction, cfg.trainer.seed, cfg.pretrained))
        value = ({None: 10.0, "p.pt": 20.0, "s.pt": 30.0}[cfg.pretrained] + cfg.trainer.seed
                 + 100 * cfg.data.label_fraction)
        summary = fake_summary(cfg, value)
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "summary.json").write_text(json.dumps(summary))
        return summary

    out = tmp_path / "table"
    # one run finished earlier, one interrupted (a checkpoint, no summary)
    done = out / "runs" / "slidr_5pct_seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps(fake_summary(base, 99.0)))
    (out / "runs" / "ppkt_10pct_seed1" / "checkpoints").mkdir(parents=True)
    (out / "runs" / "ppkt_10pct_seed1" / "checkpoints" / "epoch=0003.ckpt").write_bytes(b"")
    pretrained = {"random": None, "ppkt": "p.pt", "slidr": "s.pt"}
    table = experiment.run_detection_table(base, pretrained, out, fractions=(0.05, 0.1), seeds=(0, 1), run=run)
    assert len(calls) == 11 and "slidr_5pct_seed0" not in [c[0] for c in calls]
    assert ("ppkt_10pct_seed1", True, 0.1, 1, "p.pt") in calls
    assert all(not c[1] for c in calls if c[0] != "ppkt_10pct_seed1")
    cell = table["cells"]["slidr"]["5%"]
    assert cell["map_moderate"]["3d"]["values"] == [99.0, 36.0]
    assert table["cells"]["random"]["10%"]["map_moderate"]["3d"]["mean"] == pytest.approx(20.5)
    assert table["paper"]["slidr"]["10%"] == 61.4
    markdown = (out / "detection_table.md").read_text()
    assert "| Random init. | 15.5 ± 0.7 (56.1) | 20.5 ± 0.7 (59.1) |" in markdown
    assert (out / "detection_table.png").is_file()
    # everything finished: a second call runs nothing
    calls.clear()
    experiment.run_detection_table(base, pretrained, out, fractions=(0.05, 0.1), seeds=(0, 1), run=run)
    assert calls == []
    with pytest.raises(ConfigError, match="needs a pretrained file"):
        experiment.run_detection_table(base, {"slidr": None}, tmp_path / "bad", run=run)


def test_learning_rate_search_never_scores_on_val(tmp_path):
    base = load_config(DetectionConfig, "detection/detect_demo_cpu.yaml")
    seen = []

    def run(cfg, folder, resume=False, name=None, enable_progress_bar=False):
        seen.append((cfg.data.train_split, cfg.data.val_split, cfg.optim.lr))
        return fake_summary(cfg, {0.001: 5.0, 0.003: 9.0, 0.01: 7.0}[cfg.optim.lr])

    answer = experiment.search_learning_rates(base, [0.001, 0.003, 0.01], tmp_path, run=run)
    assert answer["best"] == 0.003 and seen[0] == ("parametrizing", "verifying", 0.001)
    assert "0.003 (best)" in (tmp_path / "lr_search.md").read_text()
    # every candidate at 0 mAP (too short to detect anything): no best, and the report says so
    tie = experiment.search_learning_rates(base, [0.001, 0.003], tmp_path / "tie",
                                           run=lambda cfg, *a, **k: fake_summary(cfg, 0.0))
    assert tie["best"] is None and "No best" in (tmp_path / "tie" / "lr_search.md").read_text()
    with pytest.raises(ConfigError, match="never on val"):
        experiment.search_learning_rates(base, [0.001], tmp_path, val_split="val", run=run)


def test_bad_input_is_one_clear_line(tiny_kitti_object_index, tmp_path, capsys):
    code = main(["detect", "--config", "detection/detect_demo_cpu.yaml", "--index", str(tiny_kitti_object_index),
                 "--val-split", "nope", "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no split 'nope'" in err[0]  # the index's content (exit 1)
    code = main(["detect", "--config", "detection/detect_demo_cpu.yaml", "--index", str(tmp_path / "missing.npz"),
                 "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "does not exist" in err[0]
    with pytest.raises(DataError, match=r"holds kitti_object samples \(3D boxes, no point labels\); data.dataset"):
        from slidr.config import DataConfig
        from slidr.data.datasets import DownstreamDataset
        DownstreamDataset(tiny_kitti_object_index, "train", DataConfig(dataset="semantickitti"))


def test_sparse_workspace_survives_inference_mode_then_training():
    """Lightning tests in inference mode; a later training step in the same process (the table runner's next cell)
    must not reuse scratch tensors made in inference mode."""
    from slidr.config import BackboneConfig
    from slidr.models.unet import build_backbone

    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(name="minkunet14_half", normalize_output=False))
    coords = torch.unique(torch.randint(0, 20, (300, 3), dtype=torch.int32), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    feats = torch.rand(len(coords), 1)
    with torch.inference_mode():
        model(SparseTensor(coords, feats))
    model(SparseTensor(coords, feats)).sum().backward()
    with torch.no_grad():
        model(SparseTensor(coords, feats))
