"""Dataset index: prepare on the real keyframe, SemanticKITTI scans and the synthetic world; file kinds; splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from slidr.cli.main import main
from slidr.data.index import check_index_dataset, load_index, write_index
from slidr.data.prepare_nuscenes import collect_nuscenes, prepare_nuscenes, stream_table
from slidr.data.prepare_semantickitti import collect_semantickitti
from slidr.data.scans import load_scan
from slidr.data.transforms import invert_rigid
from slidr.errors import DataError


@pytest.fixture(scope="module")
def keyframe_index(nuscenes_keyframe, tmp_path_factory):
    return prepare_nuscenes(nuscenes_keyframe, "v1.0-mini", tmp_path_factory.mktemp("kf") / "index.npz")


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
    out = tmp_path / "index.npz"
    assert main(["prepare", "nuscenes", "--dataroot", str(nuscenes_keyframe), "--version", "v1.0-mini",
                 "--out", str(out)]) == 0
    assert "1 samples" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as members:  # a standard container: numpy alone reads it
        header = json.loads(members["header"].tobytes())
        assert header["format"] == "nuscenes" and header["num_samples"] == 1
    assert main(["prepare", "nuscenes", "--dataroot", str(tmp_path), "--version", "v1.0-mini",
                 "--out", str(out)]) == 1  # missing data: the work failed
    assert load_index(out).samples[0]["scene"] == "scene-0061"  # the failed run left the index as it was


def _assert_same_sample(loaded, original, where=""):
    """``loaded`` has every leaf of ``original`` with the same type and value (arrays: exactly, read-only)."""
    assert isinstance(loaded, dict), where
    for key, value in original.items():
        assert key in loaded, f"{where}/{key} missing"
        if isinstance(value, dict):
            _assert_same_sample(loaded[key], value, f"{where}/{key}")
        elif isinstance(value, np.ndarray):
            assert isinstance(loaded[key], np.ndarray) and not loaded[key].flags.writeable, f"{where}/{key}"
            assert loaded[key].dtype == np.float64 and loaded[key].shape == value.shape, f"{where}/{key}"
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{where}/{key}")
        else:
            assert type(loaded[key]) is type(value) and loaded[key] == value, f"{where}/{key}"


def _assert_round_trip(header, samples, path):
    """Every sample dict and the header come back from the written file unchanged; derived transforms are the
    devkit chain's composition."""
    write_index(path, header, samples)
    index = load_index(path)
    assert index.header() == header and list(index.splits) == list(header["splits"])
    assert len(index.samples) == len(samples)
    for i, (loaded, original) in enumerate(zip(index.samples, samples)):
        _assert_same_sample(loaded, original, f"sample {i}")
        extra = set(loaded) - set(original)
        assert extra <= {"lidar_to_global"} and list(loaded["cameras"]) == list(original["cameras"])
        if "lidar_to_ego" in original:
            np.testing.assert_array_equal(loaded["lidar_to_global"], original["ego_pose"] @ original["lidar_to_ego"])
            for channel, camera in original["cameras"].items():
                expected = (invert_rigid(camera["camera_to_ego"]) @ invert_rigid(camera["ego_pose"])
                            @ loaded["lidar_to_global"])
                np.testing.assert_array_equal(loaded["cameras"][channel]["lidar_to_camera"], expected)
    return index


def test_prepared_keyframe_round_trips_every_sample(nuscenes_keyframe, tmp_path):
    header, samples = collect_nuscenes(nuscenes_keyframe, "v1.0-mini")
    _assert_round_trip(header, samples, tmp_path / "index.npz")


def test_prepared_synthetic_world_round_trips_every_sample(tiny_nuscenes_world, tmp_path):
    header, samples = collect_nuscenes(tiny_nuscenes_world, "v1.0-trainval")
    assert len(samples) == 6 and all(len(sample["cameras"]) == 6 for sample in samples)
    _assert_round_trip(header, samples, tmp_path / "index.npz")


def test_prepared_semantickitti_round_trips_every_sample(semantickitti_scans, tmp_path):
    header, samples = collect_semantickitti(_kitti_layout(semantickitti_scans, tmp_path, with_calibration=True))
    _assert_round_trip(header, samples, tmp_path / "index.npz")


_PROBE = """
import sys
from slidr.data import index, prepare_nuscenes, prepare_semantickitti, scans
if len(sys.argv) > 1:
    prepare_nuscenes.prepare_nuscenes(sys.argv[1], "v1.0-mini", sys.argv[2])
print(sorted(name for name in sys.modules if name == "numba" or name.startswith(("numba.", "slidr.data.synth"))))
"""


def _imported_synthetic_modules(*arguments: str) -> str:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    probe = subprocess.run([sys.executable, "-c", _PROBE, *arguments], capture_output=True, text=True,
                           env=environment)
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


def test_index_and_preparation_modules_do_not_import_the_synthetic_world():
    # the synthetic world's generator pulls numba (seconds of start-up, JIT caches) into every `slidr prepare`
    assert _imported_synthetic_modules() == "[]"


def test_preparing_real_data_does_not_import_the_synthetic_world(nuscenes_keyframe, tmp_path):
    assert _imported_synthetic_modules(str(nuscenes_keyframe), str(tmp_path / "index.npz")) == "[]"
    assert load_index(tmp_path / "index.npz").format == "nuscenes"


def _write_records(path, records, separator):
    path.write_text("[" + separator.join(json.dumps(record) for record in records) + "]")


def test_stream_table_equals_json_load(tmp_path):
    records = [{"token": f"{i:032x}", "filename": f"samples/CAM_FRONT/{i}.jpg", "is_key_frame": i % 3 == 0,
                "nested": {"values": [i, i / 7, None, "é"]}} for i in range(200)]
    for number, separator in enumerate((",", ",\n", " ,\n  ")):
        _write_records(tmp_path / f"t{number}.json", records, separator)
        for chunk_size in (7, 64, 1 << 22):
            assert list(stream_table(tmp_path, f"t{number}", chunk_size=chunk_size)) == records
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(stream_table(tmp_path, "empty")) == []
    (tmp_path / "cut.json").write_text((tmp_path / "t1.json").read_text()[:-30])
    with pytest.raises(DataError, match="cut.json is truncated or not valid JSON"):
        list(stream_table(tmp_path, "cut", chunk_size=64))
    (tmp_path / "object.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="object.json is not a JSON array"):
        list(stream_table(tmp_path, "object"))
    with pytest.raises(DataError, match="absent.json does not exist"):
        list(stream_table(tmp_path, "absent"))


def test_stream_table_equals_json_load_on_the_keyframe(nuscenes_keyframe):
    folder = nuscenes_keyframe / "v1.0-mini"
    expected = json.loads((folder / "sample_data.json").read_text())
    assert list(stream_table(folder, "sample_data", chunk_size=7)) == expected
    assert list(stream_table(folder, "sample_data")) == expected


def test_stream_table_time_is_linear_in_the_table_size(tmp_path):
    # v1.0-trainval's sample_data.json holds 2.6 M records. Copying the rest of the chunk after each record took
    # 20 s for these 20,000 (8 MB), 95 s for 80,000: hours for trainval, against ~1 s for json.loads here.
    records = [{"token": f"{i:032x}", "sample_token": f"{i:032x}", "ego_pose_token": f"{i:032x}",
                "timestamp": 1532402927647951 + i, "is_key_frame": i % 5 == 0, "height": 900, "width": 1600,
                "filename": f"samples/CAM_FRONT/n015-2018-07-18-11-07-57+0800__CAM_FRONT__{i}.jpg"}
               for i in range(20_000)]
    _write_records(tmp_path / "sample_data.json", records, ",\n")
    start = time.perf_counter()
    json.loads((tmp_path / "sample_data.json").read_text())
    whole = time.perf_counter() - start
    start = time.perf_counter()
    assert sum(1 for _ in stream_table(tmp_path, "sample_data")) == len(records)
    streamed = time.perf_counter() - start
    assert streamed < 10 * whole + 1.0, (streamed, whole)


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
    assert main(["prepare", "semantickitti", "--root", str(root), "--out", str(tmp_path / "k.npz")]) == 0
    index = load_index(tmp_path / "k.npz")
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


def _hand_written_samples(rng):
    """Six samples with every kind of leaf: repeated and unique strings, None, numbers, matrices (repeated and
    unique), a camera absent from one sample, and per-sample extras of varying length (boxes, class names)."""
    calibration = rng.normal(size=(4, 4))
    samples = []
    for i in range(6):
        sample = {"token": f"t{i}", "scene": f"s{i // 2}", "timestamp": 10**15 + i, "lidar": f"l{i}.bin",
                  "lidarseg": None if i % 3 else f"seg{i}.bin", "pose": rng.normal(size=(4, 4)),
                  "cameras": {"A": {"image": f"a{i}.jpg", "width": 1600, "height": 900,
                                    "intrinsic": calibration[:3, :3], "lidar_to_camera": calibration}},
                  "boxes": rng.normal(size=(i % 4, 7)), "box_names": ["car", "pedestrian", "car"][: i % 4],
                  "night": i == 2, "weather": None if i < 3 else [i * 0.5, "rain"],
                  "comment": f"séquence {i} ✓"}
        if i != 4:
            sample["cameras"]["B"] = {"image": f"b{i}.jpg", "width": 800, "height": 450,
                                      "intrinsic": calibration[:3, :3], "lidar_to_camera": rng.normal(size=(4, 4))}
        samples.append(sample)
    return samples


def _assert_hand_written_samples(index, samples):
    assert len(index.samples) == len(samples)
    for original, loaded in zip(samples, index.samples):
        assert list(loaded) == list(original) and list(loaded["cameras"]) == list(original["cameras"])
        for key in ("token", "scene", "timestamp", "lidar", "lidarseg", "box_names", "night", "weather", "comment"):
            assert loaded[key] == original[key] and type(loaded[key]) is type(original[key]), key
        for key in ("pose", "boxes"):
            assert loaded[key].dtype == np.float64 and loaded[key].shape == original[key].shape
            np.testing.assert_array_equal(loaded[key], original[key])
        for channel, camera in original["cameras"].items():
            assert list(loaded["cameras"][channel]) == list(camera)
            for key, value in camera.items():
                np.testing.assert_array_equal(loaded["cameras"][channel][key], value)
                assert type(loaded["cameras"][channel][key]) is type(value)


def test_written_and_plain_indexes_round_trip(tmp_path):
    samples = _hand_written_samples(np.random.default_rng(0))
    header = {"format": "nuscenes", "version": "test", "root": str(tmp_path), "scenes": {"s0": {}, "s1": {}, "s2": {}},
              "splits": {"train": ["s2", "s0"], "val": ["s1"]}}
    write_index(tmp_path / "index.npz", header, samples)
    (tmp_path / "plain.json").write_text(json.dumps({**header, "samples": samples},
                                                    default=lambda a: a.tolist()))
    (tmp_path / "named.json").write_bytes((tmp_path / "index.npz").read_bytes())  # the content tells the kind
    for name in ("index.npz", "plain.json", "named.json"):
        index = load_index(tmp_path / name)
        assert index.header() == header
        _assert_hand_written_samples(index, samples)
        assert index.samples[-1]["token"] == "t5" and [s["token"] for s in index.samples[1:4]] == ["t1", "t2", "t3"]
        with pytest.raises(IndexError, match="sample 6 out of range"):
            index.samples[6]
        assert index.samples.column("scene") == [sample["scene"] for sample in samples]
        assert index.samples.column("cameras/B/width") == [800, 800, 800, 800, None, 800]
        assert index.sample_indices("train").tolist() == [4, 5, 0, 1]
        assert index.sample_indices("train", 0.5).tolist() == [0, 1]  # every 2nd scene: the split's second
        assert index.sample_indices(None).tolist() == list(range(6))
        with pytest.raises(DataError, match="no split 'test'"):
            index.sample_indices("test")
    index = load_index(tmp_path / "index.npz")
    for key in ("pose", "boxes"):  # arrays come back read-only: a worker cannot corrupt the shared index
        with pytest.raises(ValueError):
            index.samples[3][key][0, 0] = 1.0
    index.samples[3]["box_names"].append("bus")  # lists are the caller's own copy
    assert index.samples[3]["box_names"] == ["car", "pedestrian", "car"]


def test_written_index_stores_repeated_values_once(tmp_path):
    rng = np.random.default_rng(1)
    calibrations = rng.normal(size=(3, 4, 4))
    samples = [{"token": f"{i:032x}", "scene": f"scene-{i // 50}", "calibration": calibrations[i % 3],
                "pose": rng.normal(size=(4, 4)), "cameras": {}} for i in range(300)]
    write_index(tmp_path / "index.npz", {"format": "nuscenes", "root": "/"}, samples)
    with np.load(tmp_path / "index.npz", allow_pickle=False) as members:
        header = json.loads(members["header"].tobytes())
        number = {entry["path"]: j for j, entry in enumerate(header["columns"])}
        assert [entry["tabled"] for entry in header["columns"]] == [False, True, True, False]
        assert members[f"c{number['calibration']}.values"].shape == (3, 4, 4)
        assert members[f"c{number['scene']}.offsets"].shape == (7,)  # six distinct names
        assert members[f"c{number['pose']}.values"].shape == (300, 4, 4)
    loaded = load_index(tmp_path / "index.npz").samples
    for original, sample in zip(samples, loaded):
        np.testing.assert_array_equal(sample["calibration"], original["calibration"])
        assert sample["scene"] == original["scene"]


def test_bad_index_files(tmp_path):
    with pytest.raises(DataError, match="does not exist; create it with `slidr prepare`"):
        load_index(tmp_path / "none.npz")
    with pytest.raises(DataError, match="is a folder"):
        load_index(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is neither a prepared index nor valid JSON"):
        load_index(tmp_path / "bad.json")
    (tmp_path / "nofmt.json").write_text(json.dumps({"root": "/", "samples": []}))
    with pytest.raises(DataError, match="lacks the key 'format'"):
        load_index(tmp_path / "nofmt.json")
    (tmp_path / "nosamples.json").write_text(json.dumps({"root": "/", "format": "nuscenes"}))
    with pytest.raises(DataError, match="lacks the key 'samples'"):
        load_index(tmp_path / "nosamples.json")
    (tmp_path / "kitti.json").write_text(json.dumps({"root": "/", "format": "kitti", "samples": []}))
    with pytest.raises(DataError, match="unknown format 'kitti'"):
        load_index(tmp_path / "kitti.json")
    # the JSON column layout that earlier versions of `slidr prepare` wrote
    (tmp_path / "old.json").write_text(json.dumps({"format": "nuscenes", "root": "/", "layout": "columns",
                                                   "num_samples": 0, "columns": {}, "missing": {}}))
    with pytest.raises(DataError, match="old.json is in the JSON column layout of an earlier slidr.*re-run "
                                        "`slidr prepare`"):
        load_index(tmp_path / "old.json")
    write_index(tmp_path / "index.npz", {"format": "nuscenes", "root": "/"}, [{"token": "a", "cameras": {}}])
    data = (tmp_path / "index.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npz is damaged or not a slidr index .*re-run `slidr prepare`"):
        load_index(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", points=np.zeros(3))
    with pytest.raises(DataError, match="other.npz is damaged or not a slidr index .*no 'header' member"):
        load_index(tmp_path / "other.npz")
    with zipfile.ZipFile(tmp_path / "index.npz") as archive, zipfile.ZipFile(tmp_path / "pickled.npz", "w") as out:
        for name in archive.namelist():
            out.writestr(name, archive.read(name))
        buffer = __import__("io").BytesIO()
        np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        out.writestr("c0.index.npy", buffer.getvalue())
    with pytest.raises(DataError, match="pickled.npz is damaged or not a slidr index"):
        load_index(tmp_path / "pickled.npz")  # never unpickles what a file holds
    with pytest.raises(ValueError, match="index format must be one of"):
        write_index(tmp_path / "x.npz", {"format": "kitti", "root": "/"}, [])
    assert not (tmp_path / "x.npz").exists()


def test_index_of_another_dataset_is_refused(tmp_path):
    write_index(tmp_path / "index.npz", {"format": "nuscenes", "root": "/"}, [{"token": "a", "cameras": {}}])
    index = load_index(tmp_path / "index.npz")
    check_index_dataset(index, "nuscenes")
    with pytest.raises(DataError, match=r"index .*index.npz holds nuscenes samples but data.dataset is "
                                        r"'semantickitti'; set data.dataset=nuscenes or use a semantickitti index"):
        check_index_dataset(index, "semantickitti")


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
    index = prepare_nuscenes(world, version, tmp_path / "synth.npz")
    scenes = list(index.scenes)
    assert sorted(index.splits["train"] + index.splits["val"]) == sorted(scenes)
    assert set(index.splits["verifying"]) <= set(index.splits["train"])
    sample = index.samples[0]
    scan = load_scan(index, sample)
    assert scan.points.shape[0] > 0
    if sample["lidarseg"] is not None:
        assert scan.labels.shape == (scan.points.shape[0],)
