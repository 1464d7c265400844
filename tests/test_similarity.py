"""Similarity maps: cosine values, query selection, rendering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidr.analysis.similarity import choose_query, cosine_similarity_maps, render_similarity
from slidr.errors import SlidrError


def test_point_with_itself_is_one_at_that_point():
    torch.manual_seed(0)
    point_features = torch.randn(40, 16)
    pixel_features = torch.randn(16, 12, 20)
    pixel_features[:, 5, 7] = point_features[3] * 2.5  # same direction, other norm
    pixel_map, point_values = cosine_similarity_maps(point_features[3], pixel_features, point_features)
    assert point_values[3] == pytest.approx(1.0, abs=1e-6)
    assert pixel_map[5, 7] == pytest.approx(1.0, abs=1e-6)
    assert float(pixel_map.max()) == pytest.approx(1.0, abs=1e-6)
    assert point_values.abs().max() <= 1 + 1e-6
    reference = torch.nn.functional.cosine_similarity(point_features, point_features[3][None], dim=1)
    torch.testing.assert_close(point_values, reference)


def test_query_choice():
    pixel_rc = np.array([[10, 10], [50, 80], [30, 30]])
    labels = np.array([4, 7, 7])
    assert choose_query(pixel_rc, index=2) == 2
    assert choose_query(pixel_rc, pixel=(48, 77)) == 1
    assert choose_query(pixel_rc, class_index=7, labels=labels, rng=np.random.default_rng(0)) in (1, 2)
    with pytest.raises(SlidrError, match="out of range"):
        choose_query(pixel_rc, index=3)
    with pytest.raises(SlidrError, match="no point of class"):
        choose_query(pixel_rc, class_index=2, labels=labels)
    with pytest.raises(SlidrError, match="exactly one"):
        choose_query(pixel_rc, index=1, pixel=(0, 0))


def test_render_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    path = render_similarity(np.zeros((40, 60, 3), np.uint8), rng.random((40, 60)), rng.integers(0, 40, (30, 2)),
                             rng.random(30), 4, tmp_path / "sim.png", title="t")
    assert path.stat().st_size > 1000


def test_similarity_figure_on_tiny_world(tiny_nuscenes_world, tmp_path):
    from slidr.analysis.similarity import similarity_figure
    from slidr.config import PretrainConfig, load_config
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.engine.checkpoint import export_pretrained
    from slidr.models.image import build_image_model
    from slidr.models.unet import build_backbone

    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", tmp_path / "index.npz")
    cfg = load_config(PretrainConfig, None, [f"data.index={tmp_path / 'index.npz'}", "backbone.name=minkunet14_half",
                                             "image.encoder=convnet_small", "data.image_size=[96,160]"])
    images = build_image_model(cfg.image)
    path = export_pretrained(tmp_path / "pretrained.pt", build_backbone(cfg.backbone), images.head, cfg, "slidr")
    with pytest.raises(SlidrError, match="randomly initialised image teacher"):
        similarity_figure(path, tmp_path / "no.png", sample=0)
    payload = torch.load(path, weights_only=False)
    payload["model_images_encoder"] = images.encoder.state_dict()
    torch.save(payload, path)
    result = similarity_figure(path, tmp_path / "sim.png", sample=1, camera="CAM_FRONT", query_index=5)
    assert (tmp_path / "sim.png").stat().st_size > 5000
    assert result["camera"] == "CAM_FRONT" and result["points_in_image"] > 100
    with pytest.raises(SlidrError, match="unknown class"):
        similarity_figure(path, tmp_path / "x.png", query_class="unicorn")
