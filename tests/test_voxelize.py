"""Voxelization: round trips, a brute-force reference, hand-computed cylindrical cells, input features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidr.data.io import read_points
from slidr.data.voxelize import point_features, quantize, voxelize


def _brute_force(points, mode, size, step):
    """Voxels by a plain loop: cell of each point with math.floor, first point per cell."""
    first: dict[tuple, int] = {}
    cells = []
    for i, (x, y, z) in enumerate(points[:, :3].tolist()):
        if mode == "cylindrical":
            cell = (math.floor(math.hypot(x, y) / size), math.floor(math.degrees(math.atan2(y, x)) / step),
                    math.floor(z / size))
        else:
            cell = (math.floor(x / size), math.floor(y / size), math.floor(z / size))
        cells.append(cell)
        first.setdefault(cell, i)
    return cells, first


@pytest.mark.parametrize("mode,size,step", [("cylindrical", 0.1, 1.0), ("cartesian", 0.1, 1.0),
                                            ("cylindrical", 0.5, 2.0), ("cartesian", 0.25, 1.0)])
def test_voxelize_against_brute_force(mode, size, step):
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 8, (3000, 3)), rng.normal(0, 0.2, (1000, 3))]).astype(np.float32)
    coords, kept_index, inverse_map = voxelize(points, mode, size, step)
    cells, first = _brute_force(points.astype(np.float64), mode, size, step)
    assert coords.dtype == np.int32 and kept_index.dtype == np.int64 and inverse_map.dtype == np.int64
    assert coords.shape == (len(first), 3) and kept_index.shape == (len(first),) and inverse_map.shape == (4000,)
    # each point's voxel is its own cell; each voxel keeps the first point of its cell
    np.testing.assert_array_equal(coords[inverse_map], np.array(cells))
    assert {tuple(c): int(k) for c, k in zip(coords.tolist(), kept_index)} == first
    assert len({tuple(c) for c in coords.tolist()}) == coords.shape[0]


def test_voxelize_real_scan_round_trip(nuscenes_keyframe):
    path = next((nuscenes_keyframe / "samples" / "LIDAR_TOP").glob("*.bin"))
    points = read_points(path, 5).points
    for mode in ("cylindrical", "cartesian"):
        coords, kept_index, inverse_map = voxelize(points, mode, 0.1, 1.0)
        np.testing.assert_array_equal(coords[inverse_map], quantize(points, mode, 0.1, 1.0))
        np.testing.assert_array_equal(inverse_map[kept_index], np.arange(coords.shape[0]))
        assert 10000 < coords.shape[0] < points.shape[0]


def test_cylindrical_cells_by_hand():
    points = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.05], [-1.0, -1e-9, -0.05], [0.0, -2.0, 1.0],
                       [1.0, 1.0, 0.0]])
    expected = [[10, 0, 0], [10, 90, 0], [10, -180, -1], [20, -90, 10], [14, 45, 0]]
    np.testing.assert_array_equal(quantize(points, "cylindrical", 0.1, 1.0), expected)
    np.testing.assert_array_equal(quantize(points, "cartesian", 0.5), [[2, 0, 0], [0, 2, 0], [-2, -1, -1],
                                                                       [0, -4, 2], [2, 2, 0]])


def test_voxelize_edge_cases():
    coords, kept_index, inverse_map = voxelize(np.zeros((0, 4), np.float32))
    assert coords.shape == (0, 3) and kept_index.shape == (0,) and inverse_map.shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        voxelize(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="unknown mode"):
        voxelize(np.zeros((2, 3)), "spherical")


def test_point_features_unit_convention_scales_intensity_to_unit_range():
    points = np.array([[0, 0, 0, 255.0], [0, 0, 0, 51.0], [0, 0, 0, 0.0]], np.float32)
    np.testing.assert_allclose(point_features(points, "nuscenes", "unit"), [[1.0], [0.2], [0.0]], rtol=1e-6)
    kitti = np.array([[0, 0, 0, 0.37], [0, 0, 0, 1.2]], np.float32)
    np.testing.assert_allclose(point_features(kitti, "semantickitti", "unit"), [[0.37], [1.0]], rtol=1e-6)
    assert point_features(points, "nuscenes", "unit").dtype == np.float32


def test_point_features_release_convention_is_the_stored_value_plus_the_loaders_offset():
    points = np.array([[0, 0, 0, 255.0], [0, 0, 0, 51.0]], np.float32)
    np.testing.assert_array_equal(point_features(points, "nuscenes"), [[255.0], [51.0]])
    kitti = np.array([[0, 0, 0, 0.37], [0, 0, 0, 0.0]], np.float32)
    np.testing.assert_allclose(point_features(kitti, "semantickitti"), [[1.37], [1.0]], rtol=1e-6)
    assert point_features(kitti, "semantickitti").dtype == np.float32
