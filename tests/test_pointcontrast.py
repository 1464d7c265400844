"""PointContrast pairs (distance threshold, registration, match radius, minimum matches) and its module."""

from __future__ import annotations

import numpy as np
import torch

from slidr.config import PretrainConfig, load_config
from slidr.data.scan_pairs import candidate_pairs, collate_pairs, match_points, relative_pose
from slidr.methods.pointcontrast import PointContrastModule, pointcontrast_steps


def _pose(yaw: float, translation) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = translation
    return pose


def test_candidate_pairs_same_scene_and_at_least_min_distance():
    scenes = ["s1", "s1", "s1", "s2", "s2"]
    positions = np.array([[0, 0, 0], [9.99, 0, 0], [10, 0, 0], [0, 0, 0], [0, 30, 0]], float)
    pairs = candidate_pairs(scenes, positions, min_distance=10.0)
    # (0, 1) is 9.99 m apart: dropped; (0, 3) is 0 m but in another scene anyway; (2, 3) crosses scenes
    assert pairs.tolist() == [[0, 2], [3, 4]]


def test_matches_after_registration_with_the_poses():
    rng = np.random.default_rng(0)
    world = rng.uniform(-20, 20, (500, 3))
    pose_a, pose_b = _pose(0.3, [1, 2, 0]), _pose(-1.0, [12, -3, 0.5])
    # each cloud holds the world points in its own lidar frame, b with 5 cm / 20 cm noise on two halves
    in_a = (world - pose_a[:3, 3]) @ pose_a[:3, :3]
    in_b = (world - pose_b[:3, 3]) @ pose_b[:3, :3]
    offsets = np.where(np.arange(500)[:, None] < 250, [0.05, 0, 0], [0.2, 0, 0])
    in_b = in_b + offsets
    matches = match_points(in_a, in_b, relative_pose(pose_a, pose_b), radius=0.1)
    assert matches[:, 0].tolist() == list(range(250))  # within 10 cm: the 5 cm half only
    assert (matches[:, 0] == matches[:, 1]).all()  # nearest neighbour is the same world point
    # without registration almost nothing matches
    assert len(match_points(in_a, in_b, np.eye(4), radius=0.1)) < 10


def test_steps_show_as_many_pairs_as_slidr_sees_clouds():
    # SLidR: 50 epochs x 100 scans = 5000 clouds; PointContrast: as many pairs, 8 pairs per step
    assert pointcontrast_steps(100, 8, 50) == 625
    assert pointcontrast_steps(100, 8, 50, world_size=2) == 313


class TinyPairs(torch.utils.data.Dataset):
    """Two views of the same random cloud (b shifted by 1 cm), every point matched."""

    samples = np.arange(6)

    def __len__(self):
        return 4

    def __getitem__(self, item):
        from slidr.data.voxelize import point_features, voxelize

        rng = np.random.default_rng(item)
        points = np.concatenate([rng.uniform(-5, 5, (300, 3)), rng.uniform(0, 255, (300, 1))], 1).astype(np.float32)
        views = []
        for shift in (0.0, 0.01):
            moved = points.copy()
            moved[:, 0] += shift
            coords, kept, inverse = voxelize(moved, "cartesian", 0.5)
            views.append({"points": moved, "voxel_coords": coords,
                          "voxel_feats": point_features(moved[kept], "nuscenes"), "inverse_map": inverse})
        return {"a": views[0], "b": views[1], "matches": np.stack([np.arange(300)] * 2, 1)}


def test_collate_offsets_and_pointcontrast_loss_falls():
    torch.set_num_threads(1)
    dataset = TinyPairs()
    batch = collate_pairs([dataset[0], dataset[1]])
    assert batch["matches"][300:].tolist() == [[300 + i, 300 + i] for i in range(300)]
    assert torch.equal(batch["a"]["points"][batch["matches"][:, 0]][:, 1:], batch["b"]["points"][
        batch["matches"][:, 1]][:, 1:])
    cfg = load_config(PretrainConfig, None, ["method=pointcontrast", "backbone.name=minkunet14_half",
                                             "loss.num_matches=256", "pairs.equivalent_epochs=50"])
    torch.manual_seed(0)
    module = PointContrastModule(cfg, dataset=dataset, collate=collate_pairs).train()
    assert module.planned_steps(world_size=1) == pointcontrast_steps(6, 16, 50)
    assert module.scans_in_batch(batch) == 4
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.5, momentum=0.9)
    values = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, stats = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert stats["pairs"] == 256
    assert values[-1] < values[0] - 0.3, values
    empty = dict(batch, matches=torch.zeros((0, 2), dtype=torch.long))
    assert module.compute_loss(empty)[0] is None
