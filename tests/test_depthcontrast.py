"""DepthContrast: joint voxel/point MoCo training, momentum encoders, queues; PointNet++-style network."""

from __future__ import annotations

import numpy as np
import torch

from slidr.config import PretrainConfig, load_config
from slidr.data.scan_pairs import collate_two_views
from slidr.data.voxelize import point_features, voxelize
from slidr.methods.depthcontrast import DepthContrastModule
from slidr.models.pointnet import PointNet2Encoder, group_neighbors


def _view(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-5, 5, (400, 3)), rng.uniform(0, 255, (400, 1))], 1).astype(np.float32)
    coords, kept, inverse = voxelize(points, "cartesian", 0.5)
    sampled = points[rng.choice(400, 128)]
    return {"points": points, "voxel_coords": coords, "voxel_feats": point_features(points[kept], "nuscenes"),
            "inverse_map": inverse,
            "sampled_points": np.concatenate([sampled[:, :3], point_features(sampled, "nuscenes")], 1)}


def test_group_neighbors_matches_brute_force():
    rng = np.random.default_rng(0)
    xyz = torch.from_numpy(rng.normal(size=(2, 50, 3)).astype(np.float32))
    features = torch.arange(2 * 50, dtype=torch.float32).view(2, 50, 1)
    centers = xyz[:, :4]
    grouped = group_neighbors(xyz, features, centers, 5)  # (B, 4, S, K)
    for b in range(2):
        for s in range(4):
            distance = ((xyz[b] - centers[b, s]) ** 2).sum(1)
            nearest = set(torch.argsort(distance)[:5].tolist())
            assert {int(v) - 50 * b for v in grouped[b, 3, s]} == nearest
            assert torch.allclose(grouped[b, :3, s, 0], torch.zeros(3))  # the centre itself comes first


def test_pointnet_embedding_shape_and_permutation_invariance_in_eval():
    torch.manual_seed(0)
    net = PointNet2Encoder(in_channels=1, out_channels=32, centers=(400, 400), neighbors=8).eval()
    points = torch.randn(2, 40, 4)
    out = net(points)
    assert out.shape == (2, 32)
    # with as many centres as points, every point is a centre: the output ignores the input order
    assert torch.allclose(net(points[:, torch.randperm(40)]), out, atol=1e-5)


def test_depthcontrast_step_updates_queries_keys_and_queues():
    torch.set_num_threads(1)
    cfg = load_config(PretrainConfig, None, ["method=depthcontrast", "backbone.name=minkunet14_half",
                                             "loss.queue_size=16", "loss.embedding_dim=8", "loss.momentum=0.9"])
    torch.manual_seed(0)
    module = DepthContrastModule(cfg).train()
    batch = collate_two_views([{"a": _view(0), "b": _view(1)}, {"a": _view(2), "b": _view(3)}])
    with torch.no_grad():  # keys differ from queries, as after some training
        for parameter in module.voxel_key.parameters():
            parameter.add_(0.1)
    keys_before = {k: v.clone() for k, v in module.voxel_key.named_parameters()}
    queue_before = module.queue_voxel.clone()
    loss, stats = module.compute_loss(batch)
    assert torch.isfinite(loss) and stats["negatives"] == 16
    loss.backward()
    assert all(p.grad is None for p in module.voxel_key.parameters())
    assert all(p.grad is None for p in module.point_key.parameters())
    assert module.model_points.final.weight.grad is None  # the pooled features come before `final`
    assert module.voxel_query.head[0].weight.grad.abs().sum() > 0
    assert module.point_query.backbone.levels[0].mlp[0].weight.grad.abs().sum() > 0
    assert module.model_points.stem[0].weight.grad.abs().sum() > 0
    # two keys enqueued at slots 0 and 1, the rest untouched
    assert not torch.equal(module.queue_voxel[:2], queue_before[:2])
    assert torch.equal(module.queue_voxel[2:], queue_before[2:])
    assert int(module.queue_voxel_next) == 2
    # momentum update of the key parameters before the step: key = 0.9 key + 0.1 query
    query = dict(module.voxel_query.named_parameters())
    for key, value in module.voxel_key.named_parameters():
        assert torch.allclose(value, 0.9 * keys_before[key] + 0.1 * query[key], atol=1e-6), key
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not any(id(p) in trainable for p in module.voxel_key.parameters())
