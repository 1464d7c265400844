"""``slidr inspect``: its JSON on the real keyframe (devkit pair counts) and on labelled SemanticKITTI scans."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from slidr.cli.main import main
from slidr.data.prepare_nuscenes import prepare_nuscenes
from slidr.data.prepare_semantickitti import prepare_semantickitti
from slidr.data.scans import load_scan
from slidr.data.voxelize import voxelize

DEVKIT_COUNTS = {"CAM_FRONT": 3053, "CAM_FRONT_RIGHT": 3076, "CAM_BACK_RIGHT": 3369, "CAM_BACK": 4820,
                 "CAM_BACK_LEFT": 4089, "CAM_FRONT_LEFT": 3696}


def test_inspect_keyframe_json(nuscenes_keyframe, tmp_path, capsys):
    index = prepare_nuscenes(nuscenes_keyframe, "v1.0-mini", tmp_path / "index.npz")
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_points"] == 34688 and report["pairs_per_camera"] == DEVKIT_COUNTS
    points = load_scan(index, index.samples[0]).points
    for mode in ("cylindrical", "cartesian"):
        assert report["num_voxels"][mode] == voxelize(points, mode)[0].shape[0]
    assert report["superpixels_per_image"] == {} and "label_histogram" not in report
    assert "not computed" in capsys.readouterr().out

    # a superpixel file where `slidr superpixels` puts it is found and counted; the token selects the sample too
    from slidr.data import superpixels

    sample = index.samples[0]
    folder = superpixels.superpixel_dir(tmp_path / "index.npz", "slic", 150)
    labels = np.repeat(np.arange(6, dtype=np.int64), 150).reshape(1, -1).repeat(2, axis=0)
    superpixels.write_labels(superpixels.superpixel_path(folder, sample["cameras"]["CAM_BACK"]["image"]), labels)
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", sample["token"], "--json",
                 str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["superpixel_method"] == folder.name and report["superpixels_per_image"] == {"CAM_BACK": 6}


def test_inspect_label_histogram_and_bad_sample(semantickitti_scans, tmp_path):
    sequence = tmp_path / "sequences" / "00"
    (sequence / "velodyne").mkdir(parents=True)
    (sequence / "labels").mkdir()
    for scan in sorted(semantickitti_scans.glob("*.bin")):
        os.symlink(scan, sequence / "velodyne" / scan.name)
        os.symlink(scan.with_suffix(".label"), sequence / "labels" / f"{scan.stem}.label")
    prepare_semantickitti(tmp_path, tmp_path / "index.npz")
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    raw = np.fromfile(sequence / "labels" / "000000.label", np.uint32) & 0xFFFF
    histogram = report["label_histogram"]
    assert sum(histogram.values()) == report["num_points"] == raw.size
    assert histogram["ignore"] == int(np.isin(raw, [0, 1, 52, 99]).sum())
    assert histogram["road"] == int(np.isin(raw, [40, 60]).sum())
    assert histogram["car"] == int(np.isin(raw, [10, 252]).sum())
    assert report["pairs_per_camera"] == {}
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "7"]) == 2
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "nope"]) == 2


# --- what is missing is said (issue "Trust", item 14) ------------------------------------------------------------


def _kitti_copy(world, tmp_path, drop=(), calib_keys=None):
    """A copy of sequence 00 of the tiny SemanticKITTI world (scans and labels linked), without ``drop``."""
    source, sequence = world / "sequences" / "00", tmp_path / "sequences" / "00"
    for folder in ("velodyne", "labels", "image_2"):
        (sequence / folder).mkdir(parents=True)
        for path in sorted((source / folder).iterdir()):
            if f"{folder}/{path.name}" not in drop:
                os.symlink(path, sequence / folder / path.name)
    for name in ("calib.txt", "poses.txt", "times.txt"):
        if name not in drop:
            lines = (source / name).read_text().splitlines()
            if name == "calib.txt" and calib_keys is not None:
                lines = [line for line in lines if line.split(":")[0] in calib_keys]
            (sequence / name).write_text("\n".join(lines) + "\n")
    prepare_semantickitti(tmp_path, tmp_path / "index.npz")
    return sequence


@pytest.mark.parametrize("drop, calib_keys, words", [
    (("calib.txt",), None, "calib.txt does not exist"),
    ((), ("P0", "P1", "P3", "Tr"), "calib.txt has no P2"),
    (("image_2/000000.png",), None, "image_2/000000.png does not exist"),
])
def test_inspect_says_why_a_scan_has_no_camera(tiny_kitti_world, tmp_path, capsys, drop, calib_keys, words):
    sequence = _kitti_copy(tiny_kitti_world, tmp_path, drop, calib_keys)
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "pairs per camera" in line)
    assert "none (SemanticKITTI pairs need the sequence's calib.txt (P2, Tr) and image_2/<frame>.png" in line
    assert words in line and str(sequence) in line
    assert words in json.loads(out.read_text())["no_camera_reason"]


def test_inspect_names_the_cameras_whose_superpixels_are_missing(tiny_nuscenes_world, tmp_path, capsys):
    from slidr.data import superpixels

    index = prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", tmp_path / "index.npz")
    sample = index.samples[0]
    folder = superpixels.superpixel_dir(tmp_path / "index.npz", "slic", 150)
    labels = np.repeat(np.arange(4, dtype=np.int64), 45).reshape(1, -1).repeat(2, axis=0)
    for channel in ("CAM_FRONT", "CAM_BACK"):
        superpixels.write_labels(superpixels.superpixel_path(folder, sample["cameras"][channel]["image"]), labels)
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--index", str(tmp_path / "index.npz"), "--sample", "0", "--json", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "superpixels per image" in line)
    missing = ["CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
    assert "CAM_FRONT 4, CAM_BACK 4" in line and f"missing for {', '.join(missing)}" in line
    report = json.loads(out.read_text())
    assert sorted(report["superpixels_missing"]) == sorted(missing)
    expected = superpixels.superpixel_path(folder, sample["cameras"]["CAM_FRONT_RIGHT"]["image"])
    assert report["superpixels_missing"]["CAM_FRONT_RIGHT"] == str(expected)
