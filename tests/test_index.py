"""Dataset index: prepare on the real keyframe, SemanticKITTI scans and the synthetic world; encodings; splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from slidr.cli.main import main
from slidr.data.index import _stream_table, invert_rigid, load_index, load_scan, prepare_nuscenes, write_index
from slidr.errors import DataError


@pytest.fixture(scope="module")
def keyframe_index(nuscenes_keyframe, tmp_path_factory):
    return prepare_nuscenes(nuscenes_keyframe, "v1.0-mini", tmp_path_factory.mktemp("kf") / "index.json")


def test_prepare_nuscenes_keyframe_matches_devkit(nuscenes_keyframe, keyframe_index):
    from nuscenes.nuscenes import NuScenes
    from pyquaternion import Quaternion

    nusc = NuScenes("v1.0-mini", str(nuscenes_keyframe), verbose=False)
    record = nusc.sample[0]
    index = keyframe_index
    assert index.format == "nuscenes" and index.version == "v1.0-mini" and len(index.samples) == 1
    assert index.root == str(nuscenes_keyframe.resolve())
    assert index.splits["train"] == ["scene-0061"] and index.splits["val"] == []
    assert index.scenes["scene-0061"]["description"].startswith("Parked truck")
    sample = index.samples[0]
    assert sample["token"] == record["token"] and sample["scene"] == "scene-0061"
    assert sample["timestamp"] == record["timestamp"] and sample["lidarseg"] is None
    assert index.resolve(sample["lidar"]).is_file()
    assert list(sample["cameras"]) == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
                                       "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]

    def transform(rec):
        matrix = np.eye(4)
        matrix[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        matrix[:3, 3] = rec["translation"]
        return matrix

    lidar = nusc.get("sample_data", record["data"]["LIDAR_TOP"])
    lidar_to_global = (transform(nusc.get("ego_pose", lidar["ego_pose_token"]))
                       @ transform(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])))
    np.testing.assert_allclose(sample["lidar_to_global"], lidar_to_global, rtol=0, atol=1e-9)
    for channel, camera in sample["cameras"].items():
        data = nusc.get("sample_data", record["data"][channel])
        calibration = nusc.get("calibrated_sensor", data["calibrated_sensor_token"])
        assert camera["image"] == data["filename"] and (camera["width"], camera["height"]) == (1600, 900)
        assert index.resolve(camera["image"]).is_file()
        np.testing.assert_array_equal(camera["intrinsic"], calibration["camera_intrinsic"])
        camera_pose = transform(nusc.get("ego_pose", data["ego_pose_token"]))
        expected = np.linalg.inv(transform(calibration)) @ np.linalg.inv(camera_pose) @ lidar_to_global
        np.testing.assert_allclose(camera["lidar_to_camera"], expected, rtol=0, atol=1e-9)


def test_cli_prepare_nuscenes(nuscenes_keyframe, tmp_path, capsys):
    out = tmp_path / "index.json"
    assert main(["prepare", "nuscenes", "--dataroot", str(nuscenes_keyframe), "--version", "v1.0-mini",
                 "--out", str(out)]) == 0
    assert "1 samples" in capsys.readouterr().out
    assert json.loads(out.read_text())["layout"] == "columns"
    assert main(["prepare", "nuscenes", "--dataroot", str(tmp_path), "--version", "v1.0-mini",
                 "--out", str(out)]) == 2


def test_stream_table_equals_json_load(nuscenes_keyframe):
    folder = nuscenes_keyframe / "v1.0-mini"
    expected = json.loads((folder / "sample_data.json").read_text())
    assert list(_stream_table(folder, "sample_data", chunk_size=7)) == expected
    assert list(_stream_table(folder, "sample_data")) == expected


def _kitti_layout(semantickitti_scans, tmp_path, with_calibration=False):
    sequence = tmp_path / "dataset" / "sequences" / "00"
    (sequence / "velodyne").mkdir(parents=True)
    (sequence / "labels").mkdir()
    for scan in sorted(semantickitti_scans.glob("*.bin")):
        os.symlink(scan, sequence / "velodyne" / scan.name)
        os.symlink(scan.with_suffix(".label"), sequence / "labels" / f"{scan.stem}.label")
    if with_calibration:
        tr = np.array([[0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, -0.3]], float)
        p2 = np.array([[700, 0, 600, 45], [0, 700, 180, 0.2], [0, 0, 1, 0.003]], float)
        (sequence / "calib.txt").write_text(f"P2: {' '.join(map(str, p2.ravel()))}\n"
                                            f"Tr: {' '.join(map(str, tr.ravel()))}\n")
        poses = [np.hstack([np.eye(3), [[0], [0], [float(i)]]]).ravel() for i in range(3)]
        (sequence / "poses.txt").write_text("".join(" ".join(map(str, p)) + "\n" for p in poses))
    return tmp_path / "dataset"


def test_prepare_semantickitti(semantickitti_scans, tmp_path):
    root = _kitti_layout(semantickitti_scans, tmp_path, with_calibration=True)
    assert main(["prepare", "semantickitti", "--root", str(root), "--out", str(tmp_path / "k.json")]) == 0
    index = load_index(tmp_path / "k.json")
    assert index.format == "semantickitti" and len(index.samples) == 3
    assert index.splits["train"] == ["00"] and index.splits["val"] == []
    sample = index.samples[1]
    assert sample["token"] == "00/000001" and sample["labels"] == "sequences/00/labels/000001.label"
    # camera 0 moves 1 m along its z axis = the lidar's x axis (Tr maps lidar x to camera z)
    np.testing.assert_allclose(sample["lidar_to_global"][:3, 3], [1.0, 0, 0], atol=1e-12)
    scan = load_scan(index, sample)
    assert scan.labels.shape == (scan.points.shape[0],) and scan.points.shape[1] == 4
    assert index.sample_indices("train").tolist() == [0, 1, 2]
    assert index.sample_indices("train", 0.5).tolist() == [0, 2]


def test_load_scan_drops_nan_points_with_their_labels_and_checks_lengths(tmp_path):
    points = np.arange(40, dtype=np.float32).reshape(10, 4)
    points[3, 1] = np.nan
    (tmp_path / "seq").mkdir()
    points.tofile(tmp_path / "seq" / "scan.bin")
    labels = np.array([40, 10, 50, 70, 72, 80, 81, 48, 44, 0], np.uint32)
    labels.tofile(tmp_path / "seq" / "scan.label")
    labels[:9].tofile(tmp_path / "seq" / "short.label")
    plain = {"format": "semantickitti", "root": ".", "scenes": {"00": {}}, "splits": {"train": ["00"]},
             "samples": [{"token": "a", "scene": "00", "lidar": "seq/scan.bin", "labels": "seq/scan.label",
                          "cameras": {}},
                         {"token": "b", "scene": "00", "lidar": "seq/scan.bin", "labels": "seq/short.label",
                          "cameras": {}}]}
    (tmp_path / "index.json").write_text(json.dumps(plain))
    index = load_index(tmp_path / "index.json")
    assert index.root == str(tmp_path.resolve())  # a relative root is relative to the index file
    scan = load_scan(index, index.samples[0])
    assert scan.num_dropped == 1 and scan.points.shape == (9, 4)
    np.testing.assert_array_equal(scan.labels, [9, 1, 13, 17, 18, 19, 11, 10, 0])
    with pytest.raises(DataError, match="short.label has 9 labels .* 10 points"):
        load_scan(index, index.samples[1])


def test_column_encoding_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(4, 4))
    samples = []
    for i in range(6):
        sample = {"token": f"t{i}", "scene": f"s{i // 2}", "timestamp": 10**15 + i, "lidar": f"l{i}.bin",
                  "lidarseg": None if i % 3 else f"seg{i}.bin", "pose": rng.normal(size=(4, 4)),
                  "cameras": {"A": {"image": f"a{i}.jpg", "width": 1600, "height": 900,
                                    "intrinsic": calibration[:3, :3], "lidar_to_camera": calibration}}}
        if i != 4:
            sample["cameras"]["B"] = {"image": f"b{i}.jpg", "width": 800, "height": 450,
                                      "intrinsic": calibration[:3, :3], "lidar_to_camera": rng.normal(size=(4, 4))}
        samples.append(sample)
    header = {"format": "nuscenes", "version": "test", "root": str(tmp_path), "scenes": {"s0": {}, "s1": {}, "s2": {}},
              "splits": {"train": ["s2", "s0"], "val": ["s1"]}}
    write_index(tmp_path / "packed.json", header, samples)
    (tmp_path / "plain.json").write_text(json.dumps({**header, "samples": samples},
                                                    default=lambda a: a.tolist()))
    for name in ("packed.json", "plain.json"):
        index = load_index(tmp_path / name)
        assert len(index.samples) == 6
        for original, loaded in zip(samples, index.samples):
            assert set(loaded) == set(original) and set(loaded["cameras"]) == set(original["cameras"])
            for key in ("token", "scene", "timestamp", "lidar", "lidarseg"):
                assert loaded[key] == original[key] and type(loaded[key]) is type(original[key])
            np.testing.assert_array_equal(loaded["pose"], original["pose"])
            for channel, camera in original["cameras"].items():
                for key, value in camera.items():
                    np.testing.assert_array_equal(loaded["cameras"][channel][key], value)
        assert index.sample_indices("train").tolist() == [4, 5, 0, 1]
        assert index.sample_indices("train", 0.5).tolist() == [0, 1]  # every 2nd scene: the split's second
        assert index.sample_indices(None).tolist() == list(range(6))
        with pytest.raises(DataError, match="no split 'test'"):
            index.sample_indices("test")
    with pytest.raises(ValueError):  # matrices come back read-only: a worker cannot corrupt the shared index
        load_index(tmp_path / "packed.json").samples[0]["pose"][0, 0] = 1.0


def test_bad_index_files(tmp_path):
    with pytest.raises(DataError, match="does not exist; create it with `slidr prepare`"):
        load_index(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        load_index(tmp_path / "bad.json")
    (tmp_path / "nofmt.json").write_text(json.dumps({"root": "/", "samples": []}))
    with pytest.raises(DataError, match="lacks the key 'format'"):
        load_index(tmp_path / "nofmt.json")


def test_invert_rigid():
    angle = 0.3
    matrix = np.eye(4)
    matrix[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    matrix[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(invert_rigid(matrix) @ matrix, np.eye(4), atol=1e-15)


def test_prepare_synthetic_world(request, tmp_path):
    try:
        world = request.getfixturevalue("tiny_nuscenes_world")
    except pytest.FixtureLookupError:
        pytest.skip("the synthetic world fixture is not available yet")
    version = next(p.name for p in world.iterdir() if p.is_dir() and (p / "scene.json").is_file())
    index = prepare_nuscenes(world, version, tmp_path / "synth.json")
    scenes = list(index.scenes)
    assert sorted(index.splits["train"] + index.splits["val"]) == sorted(scenes)
    assert set(index.splits["verifying"]) <= set(index.splits["train"])
    sample = index.samples[0]
    scan = load_scan(index, sample)
    assert scan.points.shape[0] > 0
    if sample["lidarseg"] is not None:
        assert scan.labels.shape == (scan.points.shape[0],)
