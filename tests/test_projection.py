"""Projection: exact agreement with the nuScenes devkit on the real keyframe, and the mask on synthetic cameras."""

from __future__ import annotations

import numpy as np
import pytest

from slidr.data.prepare_nuscenes import prepare_nuscenes
from slidr.data.projection import pixel_coordinates, project_points, project_to_cameras
from slidr.data.scans import load_scan
from slidr.errors import DataError

DEVKIT_COUNTS = {"CAM_FRONT": 3053, "CAM_FRONT_RIGHT": 3076, "CAM_BACK_RIGHT": 3369, "CAM_BACK": 4820,
                 "CAM_BACK_LEFT": 4089, "CAM_FRONT_LEFT": 3696}


@pytest.fixture(scope="module")
def keyframe(nuscenes_keyframe, tmp_path_factory):
    index = prepare_nuscenes(nuscenes_keyframe, "v1.0-mini", tmp_path_factory.mktemp("kf") / "index.npz")
    sample = index.samples[0]
    return index, sample, load_scan(index, sample).points


@pytest.fixture(scope="module")
def devkit_projections(nuscenes_keyframe):
    from nuscenes.nuscenes import NuScenes, NuScenesExplorer

    nusc = NuScenes("v1.0-mini", str(nuscenes_keyframe), verbose=False)
    explorer = NuScenesExplorer(nusc)
    record = nusc.sample[0]
    result = {}
    for channel in DEVKIT_COUNTS:
        points, depths, _ = explorer.map_pointcloud_to_image(record["data"]["LIDAR_TOP"], record["data"][channel])
        result[channel] = (points[:2].T, depths)
    return result


def test_pairs_equal_devkit_exactly(keyframe, devkit_projections):
    _, sample, points = keyframe
    channels = list(DEVKIT_COUNTS)
    pairing_points, pairing_images = project_to_cameras(points, sample, channels)
    for k, channel in enumerate(channels):
        devkit_uv, devkit_depth = devkit_projections[channel]
        mine = pairing_images[:, 0] == k
        kept = pairing_points[mine]
        assert kept.size == DEVKIT_COUNTS[channel] == devkit_uv.shape[0]
        depth, uv = pixel_coordinates(points, sample, channel)
        # the same points in the same order: identical float depths and pixel coordinates
        np.testing.assert_array_equal(depth[kept], devkit_depth)
        np.testing.assert_array_equal(uv[kept], devkit_uv)
        np.testing.assert_array_equal(pairing_images[mine, 1], np.round(devkit_uv[:, 1]))
        np.testing.assert_array_equal(pairing_images[mine, 2], np.round(devkit_uv[:, 0]))
        assert (pairing_images[mine, 1] >= 1).all() and (pairing_images[mine, 1] <= 899).all()
        assert (pairing_images[mine, 2] >= 1).all() and (pairing_images[mine, 2] <= 1599).all()


def test_composed_float64_transform_is_close_to_devkit(keyframe, devkit_projections):
    """The contract's one-matrix ``project_points`` agrees with the devkit up to its float32 rounding."""
    _, sample, points = keyframe
    for channel, (devkit_uv, _) in devkit_projections.items():
        camera = sample["cameras"][channel]
        index, pixel_rc = project_points(points, camera["lidar_to_camera"], camera["intrinsic"], (900, 1600))
        assert abs(index.size - devkit_uv.shape[0]) <= 3
        _, uv = pixel_coordinates(points, sample, channel)
        chain_index, _ = project_to_cameras(points, sample, [channel])
        common = np.intersect1d(index, chain_index)
        position = np.searchsorted(index, common)
        assert np.abs(pixel_rc[position][:, ::-1] - uv[common]).max() <= 0.55


def _pinhole(focal=100.0, width=64, height=48):
    intrinsic = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    # lidar x forward, y left, z up -> camera x right, y down, z forward
    lidar_to_camera = np.eye(4)
    lidar_to_camera[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    return intrinsic, lidar_to_camera, (height, width)


def _point_at(u, v, depth, focal=100.0, width=64, height=48):
    # the lidar point whose camera pixel is (u, v) at this depth
    x_cam = (u - width / 2) * depth / focal
    y_cam = (v - height / 2) * depth / focal
    return [depth, -x_cam, -y_cam]


def test_mask_border_depth_and_rounding():
    intrinsic, lidar_to_camera, hw = _pinhole()
    points = np.array([
        _point_at(10.4, 20.6, 5.0),      # 0 kept: row round(20.6)=21, col round(10.4)=10
        _point_at(0.999, 10, 5.0),      # 1 u < 1: dropped
        _point_at(1.001, 10, 5.0),      # 2 kept, col 1
        _point_at(62.999, 10, 5.0),     # 3 u < W-1 = 63: kept, col 63
        _point_at(63.001, 10, 5.0),     # 4 dropped
        _point_at(30, 46.999, 5.0),     # 5 v < H-1 = 47: kept, row 47
        _point_at(30, 20, 1.0),         # 6 depth exactly 1 m: dropped
        _point_at(30, 20, 1.001),       # 7 kept
        [-5.0, 0.0, 0.0],               # 8 behind the camera
    ])
    index, pixel_rc = project_points(points, lidar_to_camera, intrinsic, hw)
    np.testing.assert_array_equal(index, [0, 2, 3, 5, 7])
    np.testing.assert_array_equal(pixel_rc, [[21, 10], [10, 1], [10, 63], [47, 30], [20, 30]])


def _camera(transform, intrinsic, hw):
    return {"image": "x.png", "width": hw[1], "height": hw[0], "intrinsic": intrinsic, "lidar_to_camera": transform}


def test_project_to_cameras_without_devkit_chain_matches_project_points():
    rng = np.random.default_rng(0)
    intrinsic, front, hw = _pinhole()
    back = front.copy()
    back[:3, :3] = front[:3, :3] @ np.diag([-1.0, -1.0, 1.0])  # looks backwards
    points = rng.uniform(-30, 30, size=(2000, 4))
    sample = {"token": "t", "lidar": "l.bin", "cameras": {"front": _camera(front, intrinsic, hw),
                                                          "back": _camera(back, intrinsic, hw)}}
    pairing_points, pairing_images = project_to_cameras(points, sample, ["back", "front"])
    for k, transform in enumerate([back, front]):
        index, pixel_rc = project_points(points, transform, intrinsic, hw)
        assert index.size > 0
        np.testing.assert_array_equal(pairing_points[pairing_images[:, 0] == k], index)
        np.testing.assert_array_equal(pairing_images[pairing_images[:, 0] == k, 1:], pixel_rc)
    assert pairing_points.dtype == np.int64 and pairing_images.shape == (pairing_points.size, 3)


def test_calibration_with_no_point_in_any_image():
    intrinsic, front, hw = _pinhole()
    points = np.random.default_rng(1).uniform(-30, -2, size=(500, 4))  # all behind the camera
    sample = {"token": "tok123", "lidar": "samples/scan.bin", "cameras": {"front": _camera(front, intrinsic, hw)}}
    pairing_points, pairing_images = project_to_cameras(points, sample)
    assert pairing_points.shape == (0,) and pairing_images.shape == (0, 3)
    with pytest.raises(DataError, match="tok123.*samples/scan.bin.*no point in any of the images"):
        project_to_cameras(points, sample, allow_empty=False)
    with pytest.raises(DataError, match="no camera 'side'"):
        project_to_cameras(points, sample, ["side"])


def _rigid(rng, offset):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    transform = np.eye(4)
    transform[:3, :3] = rotation * np.sign(np.linalg.det(rotation))
    transform[:3, 3] = rng.uniform(-offset, offset, 3)
    return transform


def test_devkit_chain_projects_only_candidates_yet_keeps_every_pair():
    """Points placed on the mask's borders (u, v near 1 and W - 1, depth near 1 m) far from the global origin: the
    fast path (composed-transform candidates, then the devkit's float32 chain on them) pairs exactly like the chain
    run on the whole cloud."""
    from slidr.data.projection import (
        _devkit_global_to_image,
        _devkit_lidar_to_global,
        _visible,
    )

    rng = np.random.default_rng(0)
    height, width = 900, 1600
    intrinsic = np.array([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    sample = {"token": "t", "lidar": "l.bin", "lidar_to_ego": _rigid(rng, 2).tolist(),
              "ego_pose": _rigid(rng, 2000).tolist(), "cameras": {}}
    lidar_to_global = np.asarray(sample["ego_pose"]) @ np.asarray(sample["lidar_to_ego"])
    parts = []
    for channel in ("A", "B", "C"):
        ego_pose = np.asarray(sample["ego_pose"]) @ _rigid(rng, 1)  # the ego moved a little since the lidar
        camera_to_ego = _rigid(rng, 2)
        sample["cameras"][channel] = {"image": f"{channel}.jpg", "width": width, "height": height,
                                      "intrinsic": intrinsic.tolist(), "ego_pose": ego_pose.tolist(),
                                      "camera_to_ego": camera_to_ego.tolist()}
        count = 3000
        u = rng.choice([1.0, width - 1.0, 300.0], count) + rng.choice([0.0, 1e-4, -1e-4, 0.3, -0.6], count)
        v = rng.choice([1.0, height - 1.0, 400.0], count) + rng.choice([0.0, 1e-4, -1e-4, 0.5, -0.2], count)
        depth = rng.choice([1.0, 1.0001, 0.9999, 1.02, 7.0, 60.0], count)
        in_camera = (np.linalg.inv(intrinsic) @ np.stack([u, v, np.ones(count)])) * depth
        to_lidar = np.linalg.inv(np.linalg.inv(ego_pose @ camera_to_ego) @ lidar_to_global)
        parts.append((to_lidar[:3, :3] @ in_camera + to_lidar[:3, 3:4]).T)
    points = np.concatenate(parts + [rng.uniform(-80, 80, (5000, 3))]).astype(np.float32)
    pairing_points, pairing_images = project_to_cameras(points, sample)
    whole = _devkit_lidar_to_global(points, sample)
    for k, channel in enumerate(sample["cameras"]):
        depth, u, v = _devkit_global_to_image(whole, sample["cameras"][channel])
        index, pixel_rc = _visible(depth, u, v, (height, width), 1.0)
        assert 1000 < index.size < len(points) // 2  # many pairs, many points on the wrong side of a border
        np.testing.assert_array_equal(pairing_points[pairing_images[:, 0] == k], index)
        np.testing.assert_array_equal(pairing_images[pairing_images[:, 0] == k, 1:], pixel_rc)
