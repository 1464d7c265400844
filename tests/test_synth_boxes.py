"""Boxes of the synthetic world: nuScenes instance / sample_annotation tables, the KITTI object layout, and the
sensor data left byte-identical by them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_WORLD
from slidr.data import boxes as B
from slidr.data.classes import NUSCENES_CATEGORIES
from slidr.data.synth import nuscenes_writer
from slidr.data.synth.annotate import ANNOTATION_MARGIN_M, KITTI_TYPES_BY_CATEGORY
from slidr.data.synth.generate import lidar_scan, scene_objects, scene_world
from slidr.data.synth.kitti_writer import velodyne_to_ego
from slidr.data.synth.raycast import BOX, CONE, CYLINDER, ELLIPSOID
from slidr.data.synth.sensors import LidarSpec, build_rig, ego_pose
from slidr.data.synth.world import instance_boxes, plan_scenes

VERSION = "v1.0-trainval"
SEED = TINY_WORLD["seed"]

# sha256 digests of the tiny world's sensor files, recorded with main's generator (commit bf571d7, before the
# world had boxes) in this environment (x86-64, requirements.lock): annotating the objects must not change one
# byte of the point clouds, images, lidarseg labels or semantic maps. Each digest covers the files of a pattern:
# sha256 over (relative path, sha256 of the file) in sorted path order. The same digests come out with numpy's
# AVX-512 code paths disabled (NPY_DISABLE_CPU_FEATURES), so they do not hang on this machine's SIMD extensions.
SENSOR_DIGESTS = {
    ("nuscenes", "samples/LIDAR_TOP/*"): "5ed6d67c27d1e2491112e8b443e56db0e2694e2b8cc3324a878d7262697b5b2a",
    ("nuscenes", "lidarseg/*/*"): "11cc47a7fe7aa94597fb8d7fe25a88c7e1223c2fb454c75dc64699a639c98ada",
    ("nuscenes", "samples/CAM_*/*"): "0c6d369ba0347baa3019afded4224ef41675525ab69182197fac8633bb1fbe60",
    ("nuscenes", "semantic/CAM_*/*"): "191ba853dcd13e1f276234cf92b5d0aa3a76f21350179bff79a18310bcbb57a3",
    ("semantickitti", "sequences/*/velodyne/*"): "09ba063cd5aa48dda1552f14e0c6005febcb729aa9433b3dc19559abbd4c38d3",
    ("semantickitti", "sequences/*/labels/*"): "1a1bc3aab94a91edf1c45a37d7a80ea21d22b491468932edfe0d5a7067479812",
    ("semantickitti", "sequences/*/image_2/*"): "8af356fee39e64c31e530d5008cb629de8f6a4790802ee575902d715c78bf330",
}


def _digest(root: Path, pattern: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    files = sorted(root.glob(pattern))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest(), len(files)


def test_sensor_files_are_byte_identical_to_the_world_without_boxes(tiny_nuscenes_world, tiny_kitti_world):
    roots = {"nuscenes": tiny_nuscenes_world, "semantickitti": tiny_kitti_world}
    changed = []
    for (layout, pattern), expected in SENSOR_DIGESTS.items():
        digest, count = _digest(roots[layout], pattern)
        assert count >= 6, (layout, pattern)
        if digest != expected:
            changed.append(f"{layout}:{pattern}")
    assert not changed, f"sensor files changed: {changed}"


# --- object boxes from the primitives -----------------------------------------------------------------------------


def _surface_samples(kind: int, params: np.ndarray, count: int = 360) -> np.ndarray:
    """Points on a primitive's surface (street frame), dense enough to reach its extremes within 1 mm."""
    cx, cy, cz, hx, hy, hz, cos, sin = params
    angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
    if kind == BOX:
        local = np.array([[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    elif kind == ELLIPSOID:
        polar = np.linspace(0, np.pi, count // 4)
        a, p = np.meshgrid(angle, polar)
        local = np.stack([hx * np.sin(p) * np.cos(a), hy * np.sin(p) * np.sin(a), hz * np.cos(p)], -1).reshape(-1, 3)
    elif kind == CYLINDER:
        ring = np.stack([hx * np.cos(angle), hx * np.sin(angle)], -1)
        local = np.concatenate([np.column_stack([ring, np.full(count, -hz)]),
                                np.column_stack([ring, np.full(count, hz)])])
    else:
        assert kind == CONE
        ring = np.column_stack([hx * np.cos(angle), hx * np.sin(angle), np.full(count, -hz)])
        local = np.concatenate([ring, [[0.0, 0.0, hz]]])
    x = local[:, 0] * cos - local[:, 1] * sin + cx
    y = local[:, 0] * sin + local[:, 1] * cos + cy
    return np.column_stack([x, y, local[:, 2] + cz])


def test_instance_boxes_enclose_and_touch_every_object():
    conditions = plan_scenes(TINY_WORLD["scenes"], SEED)[0]
    world = scene_world(conditions, TINY_WORLD["frames"])
    tight = instance_boxes(world)
    assert len(tight.instance) == len(np.unique(world.instance[world.instance > 0])) > 50
    names = {NUSCENES_CATEGORIES[c] for c in tight.category}
    assert {"vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "human.pedestrian.adult", "vehicle.bicycle",
            "movable_object.barrier", "movable_object.trafficcone", "vehicle.construction"} <= names
    for k in range(0, len(tight.instance), 3):
        members = np.flatnonzero(world.instance == tight.instance[k])
        samples = np.concatenate([_surface_samples(world.kinds[p], world.params[p]) for p in members])
        box = tight.boxes[k]
        dx, dy = samples[:, 0] - box[0], samples[:, 1] - box[1]
        local = np.column_stack([dx * math.cos(box[6]) + dy * math.sin(box[6]),
                                 -dx * math.sin(box[6]) + dy * math.cos(box[6]), samples[:, 2] - box[2]])
        half = box[3:6] / 2
        assert (np.abs(local) <= half + 1e-9).all(), (k, np.abs(local).max(axis=0) - half)
        # tight: the object reaches all six faces
        np.testing.assert_allclose(local.max(axis=0), half, atol=2e-3)
        np.testing.assert_allclose(local.min(axis=0), -half, atol=2e-3)
    cars = [k for k in range(len(tight.instance)) if NUSCENES_CATEGORIES[tight.category[k]] == "vehicle.car"]
    sizes = tight.boxes[cars, 3:6]
    assert ((sizes[:, 0] > 3.7) & (sizes[:, 0] < 5.1) & (sizes[:, 1] > 1.6) & (sizes[:, 1] < 2.1)).all(), sizes


# --- nuScenes layout ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nusc(tiny_nuscenes_world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(tiny_nuscenes_world), verbose=False)


def _scan(conditions, frame: int) -> dict:
    """The lidar scan of a keyframe again, with each point's instance id (the writer keeps only its category);
    the scan is the keyframe's first random draw, so it is reproduced exactly."""
    world = scene_world(conditions, TINY_WORLD["frames"])
    rig = build_rig(TINY_WORLD["image_size"])
    ego_to_street, _ = ego_pose(world, conditions, frame)
    return lidar_scan(world, conditions, LidarSpec(), ego_to_street @ rig[0].to_ego,
                      np.random.default_rng([SEED, conditions.index, frame]))


def _sensor_chain(nusc, sd_token: str):
    sd = nusc.get("sample_data", sd_token)
    return nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])


def test_devkit_get_boxes_hold_each_objects_points(nusc, tiny_nuscenes_world):
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    conditions = plan_scenes(TINY_WORLD["scenes"], SEED)
    scene_of = {scene["token"]: int(scene["name"].split("-")[1]) - 1 for scene in nusc.scene}
    fractions, annotated, with_points = [], 0, 0
    for sample in nusc.sample:
        scene = conditions[scene_of[sample["scene_token"]]]
        frame = int(round((sample["timestamp"] - scene.start_timestamp) / 500_000))
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = np.fromfile(tiny_nuscenes_world / lidar["filename"], dtype=np.float32).reshape(-1, 5)
        scan = _scan(scene, frame)
        assert scan["points"].tobytes() == points.tobytes()
        boxes = nusc.get_boxes(lidar["token"])
        assert len(boxes) == len(sample["anns"]) > 10
        pose, calibration = _sensor_chain(nusc, lidar["token"])
        objects = scene_objects(scene, TINY_WORLD["frames"])
        instance_of = {nuscenes_writer.token("instance", SEED, scene.index, int(i)): int(i) for i in objects.instance}
        hit = np.bincount(scan["instance"], minlength=int(objects.instance.max()) + 1)
        seen = set()
        for box, ann_token in zip(boxes, sample["anns"]):
            annotation = nusc.get("sample_annotation", ann_token)
            instance = instance_of[annotation["instance_token"]]
            seen.add(instance)
            assert box.name == nusc.get("category", nusc.get("instance", annotation["instance_token"])
                                        ["category_token"])["name"]
            # into the lidar frame the devkit's way
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            box.translate(-np.array(calibration["translation"]))
            box.rotate(Quaternion(calibration["rotation"]).inverse)
            own = scan["instance"] == instance
            assert annotation["num_lidar_pts"] == own.sum() and annotation["num_radar_pts"] == 0
            annotated += 1
            if own.any():
                with_points += 1
                inside = points_in_box(box, points[own, :3].T.astype(np.float64))
                fractions.append(inside.mean())
                assert inside.mean() >= 0.95, (box.name, inside.mean(), own.sum())
            assert annotation["visibility_token"] in {"1", "2", "3", "4"}
        # every object the lidar hit is annotated
        assert {int(i) for i in np.flatnonzero(hit[1:]) + 1} <= seen
    print(f"{annotated} annotations, {with_points} with points; points in their box: min "
          f"{min(fractions):.4f}, mean {np.mean(fractions):.4f}")
    assert with_points > 50


def test_instances_chain_their_annotations_and_use_devkit_names(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    assert nusc.instance and nusc.sample_annotation
    detection = set()
    for instance in nusc.instance:
        token, count, previous = instance["first_annotation_token"], 0, ""
        boxes = []
        while token:
            annotation = nusc.get("sample_annotation", token)
            assert annotation["prev"] == previous and annotation["instance_token"] == instance["token"]
            boxes.append(annotation["translation"] + annotation["size"] + annotation["rotation"])
            previous, token, count = token, annotation["next"], count + 1
        assert count == instance["nbr_annotations"] and previous == instance["last_annotation_token"]
        # static objects: the same box at every keyframe
        np.testing.assert_allclose(np.array(boxes), np.array(boxes[:1]).repeat(len(boxes), axis=0), atol=1e-9)
        name = nusc.get("category", instance["category_token"])["name"]
        detection.add(category_to_detection_name(name))
    assert {"car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
            "barrier", "traffic_cone"} <= detection
    attributes = {nusc.get("attribute", t)["name"] for a in nusc.sample_annotation for t in a["attribute_tokens"]}
    assert {"vehicle.parked", "vehicle.stopped", "cycle.without_rider", "pedestrian.standing"} <= attributes
    levels = [a["visibility_token"] for a in nusc.sample_annotation]
    assert {"1", "4"} <= set(levels)  # hidden and fully visible objects both occur
    summary = json.loads((Path(nusc.dataroot) / "synth_summary.json").read_text())
    assert sum(summary["objects"].values()) == len(nusc.sample_annotation)


# --- KITTI object layout ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitti_object_world(tiny_kitti_object_world) -> Path:
    return tiny_kitti_object_world


def test_kitti_object_layout(kitti_object_world, tiny_kitti_world):
    training = kitti_object_world / "training"
    count = TINY_WORLD["scenes"] * TINY_WORLD["frames"]
    for sub, suffix in (("velodyne", "bin"), ("image_2", "png"), ("calib", "txt"), ("label_2", "txt")):
        assert sorted(p.name for p in (training / sub).iterdir()) == [f"{i:06d}.{suffix}" for i in range(count)]
    # the same scans and images as the SemanticKITTI layout of the world
    for scene in range(TINY_WORLD["scenes"]):
        for frame in range(TINY_WORLD["frames"]):
            number = f"{scene * TINY_WORLD['frames'] + frame:06d}"
            sequence = tiny_kitti_world / "sequences" / f"{scene:02d}"
            assert (training / "velodyne" / f"{number}.bin").read_bytes() == \
                (sequence / "velodyne" / f"{frame:06d}.bin").read_bytes()
            assert (training / "image_2" / f"{number}.png").read_bytes() == \
                (sequence / "image_2" / f"{frame:06d}.png").read_bytes()
    calibration = B.read_kitti_calibration(training / "calib" / "000000.txt")
    assert set(calibration) == set(B.KITTI_CALIBRATION_KEYS)
    sets = {p.stem: p.read_text().split() for p in (kitti_object_world / "ImageSets").glob("*.txt")}
    assert sorted(sets["trainval"]) == sorted(sets["train"] + sets["val"]) == [f"{i:06d}" for i in range(count)]
    assert not set(sets["parametrizing"]) & set(sets["verifying"])
    types = {name for p in (training / "label_2").iterdir() for name in B.read_kitti_labels(p).type}
    assert {"Car", "Pedestrian", "Misc", "DontCare"} <= types <= set(B.KITTI_TYPES)


def _kitti_frame(root: Path, number: str):
    training = root / "training"
    calibration = B.read_kitti_calibration(training / "calib" / f"{number}.txt")
    labels = B.read_kitti_labels(training / "label_2" / f"{number}.txt")
    points = np.fromfile(training / "velodyne" / f"{number}.bin", dtype=np.float32).reshape(-1, 4)
    return calibration, labels, points


def test_kitti_labels_round_trip_to_the_worlds_boxes(kitti_object_world, tiny_kitti_world):
    conditions = plan_scenes(TINY_WORLD["scenes"], SEED)
    frames = TINY_WORLD["frames"]
    width, height = TINY_WORLD["image_size"]
    checked = fractions = 0
    worst = 1.0
    for scene in conditions:
        objects = scene_objects(scene, frames)
        world = scene_world(scene, frames)
        for frame in range(frames):
            number = f"{scene.index * frames + frame:06d}"
            calibration, labels, points = _kitti_frame(kitti_object_world, number)
            velo_to_rect = B.kitti_velo_to_rect(calibration["R0_rect"], calibration["Tr_velo_to_cam"])
            real = labels.select(np.array([name != "DontCare" for name in labels.type], dtype=bool))
            boxes = B.kitti_camera_to_lidar(real.location, real.dimensions, real.rotation_y, velo_to_rect)
            # the world's boxes in this frame's velodyne frame
            ego_to_street, _ = ego_pose(world, scene, frame)
            truth = B.transform_boxes(objects.boxes, np.linalg.inv(ego_to_street @ velodyne_to_ego()))
            raw = np.fromfile(tiny_kitti_world / "sequences" / f"{scene.index:02d}" / "labels" / f"{frame:06d}.label",
                              dtype=np.uint32)
            point_instance = (raw >> 16).astype(np.int64)
            for k, name in enumerate(real.type):
                match = np.argmin(np.linalg.norm(truth[:, :3] - boxes[k, :3], axis=1))
                assert KITTI_TYPES_BY_CATEGORY[objects.category_names[match]] == name
                # through the file's 2 decimals: centre within 1 cm, sizes 5 mm, heading 0.01 rad
                np.testing.assert_allclose(boxes[k, :3], truth[match, :3], atol=0.011)
                np.testing.assert_allclose(boxes[k, 3:6], truth[match, 3:6], atol=0.0051)
                assert abs(B.wrap_angle(boxes[k, 6] - truth[match, 6])) < 0.0051 + 1e-3
                own = point_instance == objects.instance[match]
                assert own.any()  # labelled objects have lidar returns
                fraction = B.points_in_boxes_mask(points[own], boxes[k:k + 1])[0].mean()
                worst = min(worst, fraction)
                assert fraction >= 0.95, (number, name, fraction)
                checked += 1
            # 2D boxes, truncation and alpha are those of the label's own 3D box
            corners = B.kitti_camera_corners(real.location, real.dimensions, real.rotation_y)
            image = B.project_boxes_to_image(corners, calibration["P2"], (height, width))
            np.testing.assert_allclose(real.bbox, image.clipped, atol=0.6)
            np.testing.assert_allclose(real.truncated, image.truncation, atol=0.02)
            np.testing.assert_allclose(B.wrap_angle(real.alpha - B.observation_angle(real.location, real.rotation_y)),
                                       0.0, atol=0.011)
            assert set(real.occluded.tolist()) <= {0, 1, 2}
            fractions += int((real.occluded > 0).sum())
    print(f"{checked} KITTI labels checked; worst share of an object's points in its label box: {worst:.4f}")
    assert checked > 30 and fractions > 0  # some objects are occluded


def test_prepare_kitti_object_on_the_synthetic_layout(kitti_object_world, tmp_path):
    from slidr.data.prepare_kitti_object import prepare_kitti_object, sample_boxes

    index = prepare_kitti_object(kitti_object_world, tmp_path / "index.npz")
    count = TINY_WORLD["scenes"] * TINY_WORLD["frames"]
    assert len(index) == count and set(index.splits) == {"train", "val", "trainval", "parametrizing", "verifying"}
    assert len(index.sample_indices("trainval")) == count
    for sample in index.samples:
        calibration, labels, points = _kitti_frame(kitti_object_world, sample["frame"])
        names, boxes = sample_boxes(sample)
        assert names == [name for name in labels.type if name != "DontCare"]
        camera = sample["cameras"]["image_2"]
        assert (camera["width"], camera["height"]) == tuple(TINY_WORLD["image_size"])
        if names:
            inside = B.points_in_boxes_mask(points, boxes).sum(axis=1)
            assert (inside > 0).all()


def test_silhouettes_cover_the_whole_image_not_only_the_projected_box():
    """The unoccluded pixel count of an object, cast only inside its projected 2D box, equals the count over the
    whole image (the box bounds the object), and is at least its visible count."""
    from slidr.data.synth import annotate
    from slidr.data.synth.generate import CAMERA_RANGE_M, _camera_rays_cached, render_camera
    from slidr.data.synth.raycast import cast_rays_brute_force

    scene = plan_scenes(TINY_WORLD["scenes"], SEED)[0]
    world = scene_world(scene, TINY_WORLD["frames"])
    objects = scene_objects(scene, TINY_WORLD["frames"])
    camera = build_rig(TINY_WORLD["image_size"])[1]
    ego_to_street, _ = ego_pose(world, scene, 1)
    camera_to_street = ego_to_street @ camera.to_ego
    _, semantic, instance = render_camera(world, scene, camera, camera_to_street, np.random.default_rng(0))
    assert ((instance > 0) == np.isin(semantic, [NUSCENES_CATEGORIES.index(name) for name in (
        *KITTI_TYPES_BY_CATEGORY, "movable_object.pushable_pullable")])).all()
    seen = annotate.camera_objects(world, objects, camera, camera_to_street, _camera_rays_cached(camera), instance,
                                   CAMERA_RANGE_M)
    assert (seen.visible <= seen.silhouette).all()
    directions = _camera_rays_cached(camera) @ camera_to_street[:3, :3].T
    checked = 0
    for k in np.flatnonzero(seen.visible > 0)[:12]:
        members = objects.members[k]
        _, hit = cast_rays_brute_force(camera_to_street[:3, 3], directions, CAMERA_RANGE_M, world.kinds[members],
                                       world.params[members])
        assert seen.silhouette[k] == (hit >= 0).sum()
        checked += 1
    assert checked >= 5
    assert ANNOTATION_MARGIN_M > 3 * LidarSpec().range_noise
