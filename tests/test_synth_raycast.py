"""The ray caster: analytic distances and normals, and the culling grid against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidr.data.synth.raycast import BOX, CONE, CYLINDER, ELLIPSOID, build_grid, cast_rays, cast_rays_brute_force
from slidr.data.synth.sensors import matrix_to_quaternion, quaternion_to_matrix


def _prims(rows):
    kinds = np.array([row[0] for row in rows], dtype=np.int32)
    params = np.array([[*row[1], *row[2], math.cos(row[3]), math.sin(row[3])] for row in rows], dtype=np.float64)
    return kinds, params


def test_analytic_hits_and_normals():
    kinds, params = _prims([
        (BOX, (10.0, 0.0, 1.0), (1.0, 2.0, 1.0), 0.0),  # front face at x = 9
        (ELLIPSOID, (0.0, 10.0, 1.0), (2.0, 2.0, 2.0), 0.3),  # sphere of radius 2
        (CYLINDER, (-10.0, 0.0, 1.0), (0.5, 0.5, 1.0), 0.0),  # radius 0.5
        (CONE, (0.0, -10.0, 1.0), (1.0, 1.0, 1.0), 0.0),  # base radius 1 at z = 0, apex at z = 2
    ])
    grid = build_grid(kinds, params, cell=3.0)
    origin = np.array([0.0, 0.0, 1.0])
    directions = np.array([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])
    distance, prim, normal = cast_rays(origin, directions, 100.0, kinds, params, grid)
    # the cone at height 1 (its middle) has radius 0.5
    np.testing.assert_allclose(distance[:4], [9.0, 8.0, 9.5, 9.5], atol=1e-9)
    assert prim.tolist() == [0, 1, 2, 3, -1]
    assert np.isinf(distance[4])
    np.testing.assert_allclose(normal[:3], [[-1, 0, 0], [0, -1, 0], [1, 0, 0]], atol=1e-6)
    # cone side normal: outward and tilted up by atan(radius / height)
    slope = math.atan(1.0 / 2.0)
    np.testing.assert_allclose(normal[3], [0, math.cos(slope), math.sin(slope)], atol=1e-6)


def test_rotated_box_and_range_limit():
    kinds, params = _prims([(BOX, (5.0, 0.0, 0.0), (1.0, 1.0, 1.0), math.pi / 4)])
    grid = build_grid(kinds, params)
    distance, prim, normal = cast_rays(np.zeros(3), np.array([[1.0, 0, 0]]), 100.0, kinds, params, grid)
    assert distance[0] == pytest.approx(5.0 - math.sqrt(2.0))  # the corner points at the ray
    distance, prim, _ = cast_rays(np.zeros(3), np.array([[1.0, 0, 0]]), 3.0, kinds, params, grid)
    assert prim[0] == -1


def test_grid_culling_equals_brute_force():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        kind = int(rng.integers(0, 4))
        centre = (*rng.uniform(-60, 60, 2), rng.uniform(0, 6))
        half = tuple(rng.uniform(0.2, 4.0, 3))
        rows.append((kind, centre, half, float(rng.uniform(-math.pi, math.pi))))
    rows.append((BOX, (0.0, 0.0, -0.5), (200.0, 200.0, 0.5), 0.0))  # ground: listed as a large primitive
    kinds, params = _prims(rows)
    grid = build_grid(kinds, params, cell=4.0)
    assert grid.large.size >= 1
    directions = rng.normal(size=(20000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origin = np.array([1.0, -2.0, 1.7])
    distance, prim, _ = cast_rays(origin, directions, 150.0, kinds, params, grid)
    ref_distance, ref_prim = cast_rays_brute_force(origin, directions, 150.0, kinds, params)
    assert (prim == ref_prim).mean() > 0.9999  # ties between coincident surfaces may differ
    hit = np.isfinite(ref_distance)
    np.testing.assert_allclose(distance[hit], ref_distance[hit], atol=1e-9)
    assert np.isinf(distance[~hit]).all()


def test_quaternion_round_trip_matches_devkit_convention():
    from pyquaternion import Quaternion

    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(quaternion_to_matrix(q), Quaternion(q).rotation_matrix, atol=1e-12)
        back = matrix_to_quaternion(quaternion_to_matrix(q))
        np.testing.assert_allclose(np.abs(np.dot(back, q)), 1.0, atol=1e-12)
