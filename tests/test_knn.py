"""k-NN label transfer: probabilities against a brute-force neighbour vote, self-recall, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slidr.analysis.knn import FeatureDatabase, KnnFrame, mix_colours, precision_recall, render_frame, write_gif


def clustered_frame(rng, num_points=300, num_classes=4, dim=8):
    labels = rng.integers(1, num_classes + 1, size=num_points)
    centres = rng.normal(size=(num_classes + 1, dim)) * 5
    features = centres[labels] + rng.normal(size=(num_points, dim)) * 0.3
    return features.astype(np.float32), labels


def test_probabilities_equal_brute_force_vote():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=200)
    queries = rng.normal(size=(30, 5)).astype(np.float32)
    database = FeatureDatabase(features, labels)
    probabilities = database.class_probabilities(queries, [1, 3], k=7)
    kept_features, kept_labels = features[labels > 0], labels[labels > 0]
    for q, query in enumerate(queries):
        nearest = np.argsort(((kept_features - query) ** 2).sum(1))[:7]
        for column, c in enumerate([1, 3]):
            assert probabilities[q, column] == pytest.approx((kept_labels[nearest] == c).mean())


def test_frame_against_itself_gives_perfect_recall():
    rng = np.random.default_rng(1)
    features, labels = clustered_frame(rng)
    probabilities = FeatureDatabase(features, labels).class_probabilities(features, [1, 2, 3], k=20)
    for score in precision_recall(probabilities, labels, [1, 2, 3]):
        assert score["recall"] == 1.0
        assert score["precision"] == 1.0


def test_precision_recall_counts():
    probabilities = np.array([[0.9], [0.8], [0.2], [0.7], [0.9]])
    labels = np.array([1, 2, 1, 1, 0])  # the last point is ignored
    (score,) = precision_recall(probabilities, labels, [1])
    assert score["precision"] == pytest.approx(2 / 3)
    assert score["recall"] == pytest.approx(2 / 3)
    (score,) = precision_recall(np.zeros((3, 1)), np.array([2, 2, 2]), [1])
    assert score["precision"] is None and score["recall"] is None


def test_database_without_labels_is_refused():
    with pytest.raises(ValueError, match="no labelled point"):
        FeatureDatabase(np.zeros((3, 2)), np.zeros(3, dtype=int))


def test_colour_mixing_extremes():
    colours = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    mixed = mix_colours(np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]]), colours)
    np.testing.assert_allclose(mixed[0], [1, 0, 0])
    np.testing.assert_allclose(mixed[1], [0.45, 0.45, 0.45])
    np.testing.assert_allclose(mixed[2], [0.5, 0, 0.5])


def test_render_frames_and_gif(tmp_path):
    rng = np.random.default_rng(2)
    points = rng.uniform(-20, 20, size=(400, 3))
    probabilities = rng.random((400, 3))
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    frames = []
    for i in range(2):
        frame = KnnFrame(points, probabilities, image, np.arange(50), rng.integers(0, 60, size=(50, 2)), f"{i}")
        frames.append(render_frame(frame, ["vegetation", "car", "pedestrian"], tmp_path / f"frame_{i}.png"))
    gif = write_gif(frames, tmp_path / "knn.gif")
    with Image.open(gif) as animation:
        assert animation.n_frames == 2


@pytest.mark.slow
def test_knn_sequence_on_tiny_world(tiny_nuscenes_world, tmp_path):
    import json

    from slidr.analysis.knn import knn_sequence
    from slidr.config import PretrainConfig, load_config
    from slidr.data.index import load_index
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.engine.checkpoint import export_pretrained
    from slidr.errors import SlidrError
    from slidr.models.unet import build_backbone

    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", tmp_path / "index.npz")
    cfg = load_config(PretrainConfig, None, [f"data.index={tmp_path / 'index.npz'}", "backbone.name=minkunet14_half",
                                             "data.image_size=[96,160]"])
    path = export_pretrained(tmp_path / "pretrained.pt", build_backbone(cfg.backbone), None, cfg, "slidr")
    scene = next(iter(load_index(tmp_path / "index.npz").scenes))
    result = knn_sequence(path, tmp_path / "knn", scene=scene, classes=["car", "manmade"], k=5)
    assert len(result["frames"]) == 2  # 3 keyframes, the first is the database
    written = json.loads((tmp_path / "knn" / "knn.json").read_text())
    assert set(written["frames"][0]["scores"]) == {"car", "manmade"}
    with Image.open(tmp_path / "knn" / "knn.gif") as animation:
        assert animation.n_frames == 2
    with pytest.raises(SlidrError, match="unknown classes"):
        knn_sequence(path, tmp_path / "bad", scene=scene, classes=["unicorn"])


@pytest.mark.parametrize("method", ["slidr", "scalr"])
def test_knn_reads_the_features_the_pretraining_trained(tiny_nuscenes_world, tmp_path, monkeypatch, method):
    """SLidR trains the network's output (through ``final``): the k-NN compares it. ScaLR trains forward_features
    through its projection head and leaves ``final`` at its initialisation: the k-NN compares forward_features
    (L2-normalised), the features the downstream uses, not the output of the untrained last layer."""
    import json

    import torch

    import slidr.analysis.knn as knn
    from slidr.config import PretrainConfig, load_config
    from slidr.data.index import load_index
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.engine.checkpoint import export_pretrained, load_backbone
    from slidr.models.sparse import SparseTensor
    from slidr.models.unet import build_backbone

    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", tmp_path / "index.npz")
    cfg = load_config(PretrainConfig, None, [f"data.index={tmp_path / 'index.npz'}", f"method={method}",
                                             "backbone.name=minkunet14_half", "data.image_size=[96,160]"])
    torch.manual_seed(0)
    path = export_pretrained(tmp_path / "pretrained.pt", build_backbone(cfg.backbone), None, cfg, method)
    seen = []
    features = knn._features

    def spy(model, scan, *args):
        seen.append((scan, features(model, scan, *args)))
        return seen[-1][1]

    monkeypatch.setattr(knn, "_features", spy)
    scene = next(iter(load_index(tmp_path / "index.npz").scenes))
    result = knn.knn_sequence(path, tmp_path / "knn", scene=scene, classes=["car", "manmade"], k=5, max_frames=2)

    model = build_backbone(cfg.backbone)
    load_backbone(path, model, None)
    model.eval()
    scan, used = seen[0]
    coords = torch.from_numpy(scan["voxel_coords"])
    voxels = SparseTensor(torch.cat([torch.zeros(len(coords), 1, dtype=coords.dtype), coords], dim=1),
                          torch.from_numpy(scan["voxel_feats"]))
    with torch.no_grad():
        output = model(voxels).numpy()
        backbone = torch.nn.functional.normalize(model.forward_features(voxels), dim=1).numpy()
    expected, kind = (output, "output") if method == "slidr" else (backbone, "forward_features")
    np.testing.assert_allclose(used, expected, rtol=1e-5, atol=1e-6)
    assert used.shape[1] == (cfg.backbone.out_channels if method == "slidr" else model.feature_channels)
    assert result["features"] == kind == json.loads((tmp_path / "knn" / "knn.json").read_text())["features"]
