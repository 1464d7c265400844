"""``slidr synth``: the devkit loads the world, cameras and lidar agree, output is deterministic and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_WORLD
from slidr.cli.main import main
from slidr.data.classes import (
    NUSCENES_CATEGORIES,
    NUSCENES_CLASSES,
    NUSCENES_LEARNING_MAP,
    SEMANTICKITTI_RAW_LABELS,
    map_semantickitti_labels,
)
from slidr.data.synth import generate_world, nuscenes_writer
from slidr.data.synth.generate import lidar_scan, scene_world
from slidr.data.synth.raycast import cast_rays
from slidr.data.synth.sensors import LidarSpec, build_rig, ego_pose
from slidr.data.synth.world import plan_scenes
from slidr.errors import SlidrError

VERSION = "v1.0-trainval"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


@pytest.fixture(scope="module")
def nusc(tiny_nuscenes_world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(tiny_nuscenes_world), verbose=False)


def _transform(record) -> np.ndarray:
    from pyquaternion import Quaternion

    out = np.eye(4)
    out[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    out[:3, 3] = record["translation"]
    return out


def _sensor_to_global(nusc, sd_token: str) -> np.ndarray:
    sd = nusc.get("sample_data", sd_token)
    return _transform(nusc.get("ego_pose", sd["ego_pose_token"])) @ _transform(
        nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))


def test_devkit_loads_tables_chains_and_lidarseg(nusc, tiny_nuscenes_world):
    scenes, frames = TINY_WORLD["scenes"], TINY_WORLD["frames"]
    assert len(nusc.scene) == scenes and len(nusc.sample) == scenes * frames
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(NUSCENES_CATEGORIES)
    assert {log["token"] for log in nusc.log} == {t for m in nusc.map for t in m["log_tokens"]}
    for scene in nusc.scene:
        token, seen, timestamps = scene["first_sample_token"], 0, []
        while token:
            sample = nusc.get("sample", token)
            assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
            timestamps.append(sample["timestamp"])
            token, seen = sample["next"], seen + 1
        assert seen == scene["nbr_samples"] == frames
        assert np.allclose(np.diff(timestamps), 500_000)  # keyframes at 2 Hz
    # sample_data chains per channel, and the ego moves along the street
    first = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    sd = nusc.get("sample_data", first["data"]["CAM_BACK"])
    chain = [sd["token"]]
    while sd["next"]:
        sd = nusc.get("sample_data", sd["next"])
        assert sd["prev"] == chain[-1]
        chain.append(sd["token"])
    assert len(chain) == frames
    poses = [np.array(nusc.get("ego_pose", t)["translation"]) for t in chain]
    assert np.linalg.norm(poses[-1] - poses[0]) > 1.0
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = np.fromfile(tiny_nuscenes_world / lidar["filename"], dtype=np.float32).reshape(-1, 5)
        labels = np.fromfile(tiny_nuscenes_world / nusc.get("lidarseg", lidar["token"])["filename"], dtype=np.uint8)
        assert len(labels) == len(points) > 10_000
        assert labels.max() < len(NUSCENES_CATEGORIES)
        assert set(np.unique(points[:, 4])) <= set(range(32))
        assert np.linalg.norm(points[:, :3], axis=1).max() <= 70.1
    descriptions = " ".join(s["description"] for s in nusc.scene)
    assert descriptions and all(log["location"] for log in nusc.log)


def test_every_camera_of_every_sample_gets_points(nusc):
    summary = json.loads((Path(nusc.dataroot) / "synth_summary.json").read_text())
    counts = []
    for sample in nusc.sample:
        for channel in CAMERAS:
            points, _, image = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"],
                                                                     sample["data"][channel])
            assert image.size == tuple(TINY_WORLD["image_size"])
            assert points.shape[1] > 1000, (sample["token"], channel)
            counts.append(points.shape[1])
    assert summary["pairs_per_camera"] == pytest.approx(np.mean(counts), abs=1.0)


@pytest.mark.slow
def test_projected_lidar_labels_match_semantic_maps(nusc, tiny_nuscenes_world):
    """Independent projection (devkit chain with pyquaternion); occlusion decided by a ray from the camera."""
    conditions = plan_scenes(TINY_WORLD["scenes"], TINY_WORLD["seed"])
    scene_index = {s["token"]: i for i, s in enumerate(sorted(nusc.scene, key=lambda s: s["name"]))}
    agree = total = occluded = 0
    for sample in nusc.sample:
        world = scene_world(conditions[scene_index[sample["scene_token"]]], TINY_WORLD["frames"])
        global_to_street = np.linalg.inv(world.street_to_global)
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = np.fromfile(tiny_nuscenes_world / lidar["filename"], dtype=np.float32).reshape(-1, 5)[:, :3]
        labels = np.fromfile(tiny_nuscenes_world / nusc.get("lidarseg", lidar["token"])["filename"], dtype=np.uint8)
        lidar_to_global = _sensor_to_global(nusc, lidar["token"])
        global_points = points @ lidar_to_global[:3, :3].T + lidar_to_global[:3, 3]
        for channel in CAMERAS:
            cam = nusc.get("sample_data", sample["data"][channel])
            camera_to_global = _sensor_to_global(nusc, cam["token"])
            intrinsic = np.array(nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"])
            in_camera = (global_points - camera_to_global[:3, 3]) @ camera_to_global[:3, :3]
            depth = in_camera[:, 2]
            uv = (in_camera @ intrinsic.T)[:, :2] / depth[:, None]
            keep = (depth > 1) & (uv[:, 0] > 1) & (uv[:, 0] < cam["width"] - 1) & (uv[:, 1] > 1) & \
                (uv[:, 1] < cam["height"] - 1) & (labels > 0)
            index = np.flatnonzero(keep)
            semantic = np.asarray(Image.open(tiny_nuscenes_world / nuscenes_writer.semantic_file(cam["filename"])))
            pixel_labels = semantic[np.round(uv[index, 1]).astype(int), np.round(uv[index, 0]).astype(int)]
            # occluded: something lies between the camera and the point
            centre = global_to_street[:3, :3] @ camera_to_global[:3, 3] + global_to_street[:3, 3]
            target = global_points[index] @ global_to_street[:3, :3].T + global_to_street[:3, 3]
            offset = target - centre
            distance = np.linalg.norm(offset, axis=1)
            hit, _, _ = cast_rays(centre, offset / distance[:, None], 300.0, world.kinds, world.params, world.grid)
            visible = hit > distance - 0.1
            occluded += int((~visible).sum())
            agree += int((pixel_labels[visible] == labels[index][visible]).sum())
            total += int(visible.sum())
    assert total > 50_000
    assert agree / total >= 0.95, agree / total
    assert occluded < 0.2 * total


def test_summary_and_previews(tiny_nuscenes_world):
    summary = json.loads((tiny_nuscenes_world / "synth_summary.json").read_text())
    assert summary["scenes"] == TINY_WORLD["scenes"]
    assert summary["samples"] == TINY_WORLD["scenes"] * TINY_WORLD["frames"]
    assert set(summary["class_points"]) == set(NUSCENES_CLASSES)
    assert 15_000 < summary["points_per_scan"] < 40_000
    assert summary["pairs_per_camera"] > 1000
    for name in ("bev.png", "camera_depth.png"):
        with Image.open(tiny_nuscenes_world / "preview" / name) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_default_world_histogram_has_all_classes_with_imbalance():
    """One lidar scan per scene of the default 10-scene world (its first keyframe) already holds every class."""
    counts = np.zeros(len(NUSCENES_CATEGORIES), dtype=np.int64)
    rig = build_rig((800, 450))
    for conditions in plan_scenes(10, 0):
        world = scene_world(conditions, 10)
        ego_to_street, _ = ego_pose(world, conditions, 0)
        scan = lidar_scan(world, conditions, LidarSpec(), ego_to_street @ rig[0].to_ego,
                          np.random.default_rng(conditions.index))
        counts += np.bincount(scan["category"], minlength=len(counts))
    per_class = np.bincount(NUSCENES_LEARNING_MAP, weights=counts, minlength=17)[1:]
    by_name = dict(zip(NUSCENES_CLASSES, per_class))
    assert all(count > 0 for count in per_class), by_name
    assert by_name["driveable_surface"] > 10 * by_name["car"] > 10 * by_name["bicycle"]
    assert by_name["manmade"] > 20 * by_name["traffic_cone"]


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path, tiny_nuscenes_world):
    """Same seed with 2 worker processes: byte-identical files (the fixture used 1 process)."""
    generate_world(tmp_path / "again", workers=2, show_progress=False, previews=False, **TINY_WORLD)
    ours = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for relative in ours:
        if relative.name == "synth_summary.json":
            continue
        if relative.name == "synth_manifest.json":  # the fixture's lists its previews too
            again = json.loads((tmp_path / "again" / relative).read_text())["files"]
            first = json.loads((tiny_nuscenes_world / relative).read_text())["files"]
            assert again == [name for name in first if not name.startswith("preview/")]
            continue
        assert (tmp_path / "again" / relative).read_bytes() == (tiny_nuscenes_world / relative).read_bytes(), relative
    other = lidar_scan_bytes(TINY_WORLD["seed"] + 1)
    assert other != lidar_scan_bytes(TINY_WORLD["seed"])


def lidar_scan_bytes(seed: int) -> bytes:
    conditions = plan_scenes(1, seed)[0]
    world = scene_world(conditions, 1)
    ego_to_street, _ = ego_pose(world, conditions, 0)
    rig = build_rig((64, 64))
    return lidar_scan(world, conditions, LidarSpec(), ego_to_street @ rig[0].to_ego,
                      np.random.default_rng(seed))["points"].tobytes()


def test_semantickitti_layout_round_trip(tiny_kitti_world, tiny_nuscenes_world, nusc):
    from slidr.data.synth.kitti_writer import read_calib

    sequences = sorted(p.name for p in (tiny_kitti_world / "sequences").iterdir())
    assert sequences == ["00", "01"]
    sequence = tiny_kitti_world / "sequences" / "00"
    calib = read_calib(sequence / "calib.txt")
    assert {"P0", "P1", "P2", "P3", "Tr"} <= set(calib)
    poses = np.loadtxt(sequence / "poses.txt").reshape(-1, 3, 4)
    assert len(poses) == TINY_WORLD["frames"]
    np.testing.assert_allclose(poses[0], np.eye(4)[:3], atol=1e-9)
    assert np.linalg.norm(poses[-1][:, 3]) > 1.0  # the camera moved
    # the same scan as the nuScenes world's first keyframe, turned into KITTI axes (x forward, y left)
    first = nusc.get("sample", sorted(nusc.scene, key=lambda s: s["name"])[0]["first_sample_token"])
    lidar = nusc.get("sample_data", first["data"]["LIDAR_TOP"])
    nus_points = np.fromfile(tiny_nuscenes_world / lidar["filename"], dtype=np.float32).reshape(-1, 5)
    nus_labels = np.fromfile(tiny_nuscenes_world / nusc.get("lidarseg", lidar["token"])["filename"], np.uint8)
    velodyne = np.fromfile(sequence / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    raw = np.fromfile(sequence / "labels" / "000000.label", dtype=np.uint32)
    assert len(velodyne) == len(raw) == len(nus_points)
    np.testing.assert_allclose(velodyne[:, 0], nus_points[:, 1], atol=1e-5)
    np.testing.assert_allclose(velodyne[:, 1], -nus_points[:, 0], atol=1e-5)
    assert 0.0 <= velodyne[:, 3].min() and velodyne[:, 3].max() <= 1.0
    semantic = raw & 0xFFFF
    assert set(np.unique(semantic).tolist()) <= set(SEMANTICKITTI_RAW_LABELS)
    map_semantickitti_labels(raw)  # raises on unknown ids
    cars = nus_labels == NUSCENES_CATEGORIES.index("vehicle.car")
    assert cars.any() and (semantic[cars] == 10).all()
    manmade = semantic[nus_labels == NUSCENES_CATEGORIES.index("static.manmade")]
    assert {50, 80} <= set(np.unique(manmade).tolist())  # buildings and poles are told apart
    # P2 @ Tr puts the points in the front image
    with Image.open(sequence / "image_2" / "000000.png") as image:
        width, height = image.size
    assert (width, height) == tuple(TINY_WORLD["image_size"])
    homogeneous = np.column_stack([velodyne[:, :3], np.ones(len(velodyne))])
    camera = homogeneous @ np.vstack([calib["Tr"], [0, 0, 0, 1]]).T
    front = camera[:, 2] > 1
    uv = camera[front] @ calib["P2"].T
    uv = uv[:, :2] / uv[:, 2:]
    inside = (uv[:, 0] > 0) & (uv[:, 0] < width) & (uv[:, 1] > 0) & (uv[:, 1] < height)
    assert inside.sum() > 1000


@pytest.mark.parametrize("argv, message", [
    (["--scenes", "0"], "--scenes 0: scenes must be > 0"),
    (["--frames", "-2"], "--frames -2: frames must be > 0"),
    (["--image-size", "63x200"], "--image-size 63x200: image_size must be [width, height] with both sides >= 64"),
    (["--image-size", "big"], "WIDTHxHEIGHT"),
    (["--workers", "0"], "--workers 0: workers must be > 0"),
])
def test_bad_input_gives_one_clear_error(tmp_path, capsys, argv, message):
    code = main(["synth", "--out", str(tmp_path / "world"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "world").exists()


def test_unwritable_or_foreign_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["synth", "--out", str(blocker / "world"), "--scenes", "1", "--frames", "1"]) != 0
    assert "a_file is a file, not a folder" in capsys.readouterr().err  # checked by slidr before any work
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(SlidrError, match="not empty"):
        generate_world(foreign, scenes=1, frames=1, image_size=(64, 64))
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_failure_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    out = tmp_path / "world"
    generate_world(out, scenes=1, frames=1, image_size=(64, 64), seed=3, workers=1, show_progress=False,
                   previews=False)
    before = (out / "synth_summary.json").read_text()
    calls = []

    def failing_write_camera(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    original = nuscenes_writer.write_camera
    monkeypatch.setattr(nuscenes_writer, "write_camera", failing_write_camera)
    with pytest.raises(SlidrError, match="No space left"):
        generate_world(out, scenes=1, frames=2, image_size=(64, 64), seed=4, workers=1, show_progress=False,
                       overwrite=True)
    assert (out / "synth_summary.json").read_text() == before  # the previous world is untouched
    fresh = tmp_path / "fresh"
    with pytest.raises(SlidrError):
        generate_world(fresh, scenes=1, frames=2, image_size=(64, 64), seed=4, workers=1, show_progress=False)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporary folder left behind


# --- regenerating never deletes what slidr synth did not write (issue "Trust", item 4) ----------------------------

SMALL = dict(scenes=1, image_size=(64, 64), workers=1, show_progress=False, previews=False)


def _user_things(world: Path) -> dict[str, bytes]:
    """What a user puts into a world: an index, superpixels, runs, notes, a file inside a generated folder."""
    things = {"index.npz": b"index", "notes.txt": b"my notes", "runs/slidr/config.yaml": b"method: slidr",
              "superpixels/slic_n150_c6_s3/CAM_FRONT/a.png": b"png", "samples/LIDAR_TOP/README.mine": b"mine",
              "runs/empty_folder_marker": b""}
    for name, data in things.items():
        (world / name).parent.mkdir(parents=True, exist_ok=True)
        (world / name).write_bytes(data)
    (world / "an_empty_folder_of_mine").mkdir()
    return things


def _manifest(world: Path) -> list[str]:
    return json.loads((world / "synth_manifest.json").read_text())["files"]


def test_the_manifest_lists_exactly_the_generated_files(tmp_path):
    out = tmp_path / "world"
    generate_world(out, frames=1, seed=3, **SMALL)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert _manifest(out) == [name for name in files if name != "synth_manifest.json"]


def test_an_existing_world_is_replaced_only_with_overwrite_and_user_files_stay(tmp_path, capsys):
    out = tmp_path / "world"
    generate_world(out, frames=2, seed=3, **SMALL)
    old_files = set(_manifest(out))
    things = _user_things(out)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # without --overwrite: refused, by the function and by the command (a usage error: exit 2), nothing touched
    with pytest.raises(SlidrError, match="already holds a synthetic world; pass --overwrite"):
        generate_world(out, frames=1, seed=4, **SMALL)
    assert main(["synth", "--out", str(out), "--scenes", "1", "--frames", "1", "--image-size", "64x64",
                 "--no-progress", "--no-preview"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    # with --overwrite (another seed, one frame fewer): the new world, the user's things as they were
    assert main(["synth", "--out", str(out), "--scenes", "1", "--frames", "1", "--image-size", "64x64", "--seed",
                 "4", "--workers", "1", "--no-progress", "--no-preview", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "kept what slidr synth did not write" in err and "index.npz" in err and "superpixels" in err
    for name, data in things.items():
        assert (out / name).read_bytes() == data, name
    assert (out / "an_empty_folder_of_mine").is_dir()
    new_files = set(_manifest(out))
    assert json.loads((out / "synth_summary.json").read_text())["seed"] == 4
    for name in old_files - new_files:  # the second frame's files: the old world's own, removed
        assert not (out / name).exists(), name
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == new_files | set(things) | {"synth_manifest.json"}


def test_overwrite_refuses_what_it_cannot_tell_apart(tmp_path):
    out = tmp_path / "world"
    generate_world(out, frames=1, seed=3, **SMALL)
    # a file of the user's exactly where the new world writes one (not a file of the old world): refused
    generate_world(tmp_path / "bigger", frames=2, seed=3, **SMALL)
    in_the_way = sorted(set(_manifest(tmp_path / "bigger")) - set(_manifest(out)))[0]
    (out / in_the_way).parent.mkdir(parents=True, exist_ok=True)
    (out / in_the_way).write_bytes(b"mine")
    summary = (out / "synth_summary.json").read_text()
    with pytest.raises(SlidrError, match="files that slidr synth did not write: " + in_the_way):
        generate_world(out, frames=2, seed=3, overwrite=True, **SMALL)
    assert (out / in_the_way).read_bytes() == b"mine" and (out / "synth_summary.json").read_text() == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigger", "world"]  # no temporary folder left
    (out / in_the_way).unlink()
    # a manifest that is damaged, or names files outside the world, or is absent (an earlier slidr): refused
    manifest = out / "synth_manifest.json"
    good = manifest.read_text()
    for text, words in (("{not json", "is damaged"),
                        (json.dumps({"files": ["../outside.txt"]}), "outside the world")):
        manifest.write_text(text)
        with pytest.raises(SlidrError, match=words):
            generate_world(out, frames=1, seed=5, overwrite=True, **SMALL)
    manifest.unlink()
    with pytest.raises(SlidrError, match="without a synth_manifest.json"):
        generate_world(out, frames=1, seed=5, overwrite=True, **SMALL)
    manifest.write_text(good)
    # a folder that holds no world at all is never overwritten
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(SlidrError, match="holds no synthetic world"):
        generate_world(foreign, frames=1, seed=3, overwrite=True, **SMALL)
    assert (foreign / "chapter1.tex").read_text() == "precious"
