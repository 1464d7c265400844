"""slidr.data.boxes: box geometry against the nuScenes devkit, KITTI conventions on real KITTI object frames, and
``slidr prepare kitti-object``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from slidr.cli.main import main
from slidr.data import boxes as B
from slidr.errors import DataError

FRAMES = ("000000", "000001", "000002")


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    boxes = np.zeros((count, 7))
    boxes[:, :3] = rng.uniform(-20, 20, (count, 3))
    boxes[:, 3:6] = rng.uniform(0.3, 6.0, (count, 3))
    boxes[:, 6] = rng.uniform(-math.pi, math.pi, count)
    return boxes


def _devkit_box(box: np.ndarray):
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    return Box(box[:3], (box[4], box[3], box[5]), Quaternion(axis=(0.0, 0.0, 1.0), angle=box[6]))


# --- geometry, against the nuScenes devkit ------------------------------------------------------------------------


def test_corners_match_the_devkit_box():
    rng = np.random.default_rng(0)
    for box in _random_boxes(rng, 20):
        ours = B.box_corners(box[None])[0]
        theirs = _devkit_box(box).corners().T  # the devkit: first four face forward, then the back four
        front = ours[[0, 1, 4, 5]]
        np.testing.assert_allclose(np.sort(front, axis=0), np.sort(theirs[:4], axis=0), atol=1e-9)
        np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(theirs, axis=0), atol=1e-9)
        # corner order: 0-3 bottom, 4-7 top; 0 front-left (left = +w side, counter-clockwise from the heading)
        heading = np.array([math.cos(box[6]), math.sin(box[6]), 0.0])
        left = np.array([-math.sin(box[6]), math.cos(box[6]), 0.0])
        offset = ours[0] - box[:3]
        assert offset @ heading > 0 and offset @ left > 0 and offset[2] < 0
        assert (ours[4:, 2] > ours[:4, 2]).all()


def test_points_in_boxes_matches_the_devkit():
    from nuscenes.utils.geometry_utils import points_in_box

    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 12)
    boxes[5] = boxes[2] + (0.5, 0.3, 0.2, 0, 0, 0, 0.4)  # overlapping boxes: the lower index wins
    near = boxes[rng.integers(0, len(boxes), 20_000), :3] + rng.uniform(-3, 3, (20_000, 3))
    points = np.concatenate([rng.uniform(-24, 24, (5_000, 3)), near])
    mask = B.points_in_boxes_mask(points, boxes)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(mask[k], points_in_box(_devkit_box(box), points.T))
    assert mask.sum() > 2000 and (mask.sum(axis=0) > 1).any()  # overlaps too
    index = B.points_in_boxes(points, boxes)
    inside = mask.any(axis=0)
    assert (index[~inside] == -1).all()
    np.testing.assert_array_equal(index[inside], mask[:, inside].argmax(axis=0))  # lowest box index first
    assert (index[mask[2] & mask[5]] == 2).all()
    assert (B.points_in_boxes(points, np.zeros((0, 7))) == -1).all()
    grown = B.points_in_boxes_mask(points, boxes, margin=0.5)
    assert (grown | ~mask).all() and grown.sum() > mask.sum()


def test_transform_boxes_moves_corners_rigidly():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 10)
    yaw = 2.1
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    matrix[:3, 3] = (100.0, -30.0, 2.0)
    moved = B.transform_boxes(boxes, matrix)
    expected = B.box_corners(boxes) @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(B.box_corners(moved), expected, atol=1e-9)
    np.testing.assert_allclose(B.transform_boxes(moved, np.linalg.inv(matrix)), boxes, atol=1e-9)


def test_nuscenes_conversions_follow_the_devkit_chain():
    """Global -> lidar as the devkit's get_sample_data does it (translate, rotate by the inverse pose, twice)."""
    from pyquaternion import Quaternion

    rng = np.random.default_rng(3)
    ego = Quaternion(axis=(0.0, 0.0, 1.0), angle=0.7)
    ego_translation = np.array([600.0, 1500.0, 0.0])
    lidar = Quaternion(axis=(0.0, 0.0, 1.0), angle=-math.pi / 2)
    lidar_translation = np.array([0.94, 0.0, 1.84])
    lidar_to_global = np.eye(4)
    lidar_to_global[:3, :3] = ego.rotation_matrix @ lidar.rotation_matrix
    lidar_to_global[:3, 3] = ego.rotation_matrix @ lidar_translation + ego_translation
    boxes = _random_boxes(rng, 8)
    translation, size, rotation = B.lidar_to_nuscenes(boxes, lidar_to_global)
    from nuscenes.utils.data_classes import Box

    for k in range(len(boxes)):
        box = Box(translation[k], size[k], Quaternion(rotation[k]))
        box.translate(-ego_translation)
        box.rotate(ego.inverse)
        box.translate(-lidar_translation)
        box.rotate(lidar.inverse)
        np.testing.assert_allclose(np.sort(box.corners().T, axis=0),
                                   np.sort(B.box_corners(boxes[k:k + 1])[0], axis=0), atol=1e-6)
    np.testing.assert_allclose(B.nuscenes_to_lidar(translation, size, rotation, lidar_to_global), boxes, atol=1e-9)
    assert (rotation[:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(rotation, axis=1), 1.0)


# --- KITTI conventions --------------------------------------------------------------------------------------------


def _official_corners(location: np.ndarray, dimensions: np.ndarray, rotation_y: float) -> np.ndarray:
    """Transcription of the KITTI object devkit's computeBox3D (readme / MATLAB): (8, 3) in the rectified frame."""
    h, w, length = dimensions
    rotation = np.array([[math.cos(rotation_y), 0, math.sin(rotation_y)], [0, 1, 0],
                         [-math.sin(rotation_y), 0, math.cos(rotation_y)]])
    x = [length / 2, length / 2, -length / 2, -length / 2, length / 2, length / 2, -length / 2, -length / 2]
    y = [0, 0, 0, 0, -h, -h, -h, -h]
    z = [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2]
    return (rotation @ np.array([x, y, z])).T + location


def test_kitti_corners_are_the_official_ones():
    rng = np.random.default_rng(4)
    for _ in range(10):
        location = rng.uniform(-10, 30, 3)
        dimensions = rng.uniform(0.5, 5, 3)
        rotation_y = float(rng.uniform(-math.pi, math.pi))
        ours = B.kitti_camera_corners(location[None], dimensions[None], np.array([rotation_y]))[0]
        np.testing.assert_allclose(ours, _official_corners(location, dimensions, rotation_y), atol=1e-9)


def test_kitti_axis_aligned_calibration_gives_the_usual_formulas():
    """Velodyne x forward, y left, z up; camera x right, y down, z forward: ry = -yaw - pi/2, corners agree."""
    velo_to_rect = np.eye(4)
    velo_to_rect[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    velo_to_rect[:3, 3] = (0.02, -0.08, -0.27)
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 20)
    location, dimensions, rotation_y = B.lidar_to_kitti_camera(boxes, velo_to_rect)
    np.testing.assert_allclose(B.wrap_angle(rotation_y + boxes[:, 6] + math.pi / 2), 0.0, atol=1e-12)
    np.testing.assert_allclose(dimensions, boxes[:, [5, 4, 3]])
    camera_corners = B.box_corners(boxes) @ velo_to_rect[:3, :3].T + velo_to_rect[:3, 3]
    np.testing.assert_allclose(B.kitti_camera_corners(location, dimensions, rotation_y), camera_corners, atol=1e-9)


def test_project_boxes_clips_at_the_camera_plane_and_the_image():
    projection = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    centred = B.kitti_camera_corners(np.array([[0.0, 1.5, 20.0]]), np.array([[1.5, 1.6, 4.0]]), np.array([0.0]))
    image = B.project_boxes_to_image(centred, projection, (375, 1242))
    uv = centred[0] @ projection[:, :3].T
    uv = uv[:, :2] / uv[:, 2:]
    np.testing.assert_allclose(image.full[0], [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    assert image.valid[0] and image.truncation[0] == 0
    # a box reaching behind the camera: only its part in front counts, and it is truncated by the image border
    beside = B.kitti_camera_corners(np.array([[4.0, 1.5, 1.0]]), np.array([[1.5, 1.6, 6.0]]),
                                    np.array([math.pi / 2]))
    image = B.project_boxes_to_image(beside, projection, (375, 1242))
    assert image.valid[0] and 0 < image.truncation[0] < 1 and image.clipped[0, 2] == 1241
    assert np.isfinite(image.full).all()
    behind = B.kitti_camera_corners(np.array([[0.0, 1.5, -10.0]]), np.array([[1.5, 1.6, 4.0]]), np.array([0.0]))
    image = B.project_boxes_to_image(behind, projection, (375, 1242))
    assert not image.valid[0] and image.truncation[0] == 1


def test_label_and_calibration_files_round_trip_byte_for_byte(kitti_object_frames):
    for frame in FRAMES:
        label = (kitti_object_frames / "label_2" / f"{frame}.txt").read_text()
        assert B.format_kitti_labels(B.parse_kitti_labels(label)) == label
        calib = (kitti_object_frames / "calib" / f"{frame}.txt").read_text()
        assert B.format_kitti_calibration(B.parse_kitti_calibration(calib)) == calib
    labels = B.read_kitti_labels(kitti_object_frames / "label_2" / "000001.txt")
    assert labels.type[:3] == ["Truck", "Car", "Cyclist"] and labels.type.count("DontCare") == 4
    np.testing.assert_allclose(labels.dimensions[1], [1.67, 1.87, 3.69])
    scored = B.KittiLabels.concatenate([labels.select(np.arange(3))])
    scored.score = np.array([0.9, 0.5, 0.25])
    again = B.parse_kitti_labels(B.format_kitti_labels(scored))
    np.testing.assert_allclose(again.score, scored.score)


@pytest.mark.parametrize("text, message", [
    ("Car 0.00 0 1.0 1 2 3\n", "7 fields"),
    ("Car 0.00 zero -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01\n", "must be numbers"),
])
def test_bad_label_lines_name_the_file(tmp_path, text, message):
    path = tmp_path / "000007.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        B.read_kitti_labels(path)
    assert "000007.txt line 1" in str(error.value)


def test_bad_calibration_names_the_file_and_key(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: " + " 0" * 12 + "\n")
    with pytest.raises(DataError, match="calib.txt: P2 has 3 numbers, expected 12"):
        B.read_kitti_calibration(path)
    path.write_text("P2: " + " 1" * 12 + "\n")
    with pytest.raises(DataError, match="lacks R0_rect, Tr_velo_to_cam"):
        B.read_kitti_calibration(path)


# --- the real KITTI object frames ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitti_object_frames(realdata: Path) -> Path:
    """KITTI 3D object training frames 000000-000002 (velodyne, image_2, calib, label_2)."""
    path = realdata / "kitti_object_vis" / "data" / "object" / "training"
    if not all((path / sub).is_dir() for sub in ("velodyne", "image_2", "calib", "label_2")):
        pytest.skip(f"{path} lacks velodyne/image_2/calib/label_2")
    return path


def _real_frame(root: Path, frame: str):
    calibration = B.read_kitti_calibration(root / "calib" / f"{frame}.txt")
    labels = B.read_kitti_labels(root / "label_2" / f"{frame}.txt")
    points = np.fromfile(root / "velodyne" / f"{frame}.bin", dtype=np.float32).reshape(-1, 4)
    objects = labels.select(np.array([name != "DontCare" for name in labels.type]))
    velo_to_rect = B.kitti_velo_to_rect(calibration["R0_rect"], calibration["Tr_velo_to_cam"])
    return calibration, objects, points, velo_to_rect


def test_real_labels_hold_lidar_points_and_round_trip(kitti_object_frames):
    counts = {}
    for frame in FRAMES:
        calibration, objects, points, velo_to_rect = _real_frame(kitti_object_frames, frame)
        boxes = B.kitti_camera_to_lidar(objects.location, objects.dimensions, objects.rotation_y, velo_to_rect)
        inside = B.points_in_boxes_mask(points, boxes).sum(axis=1)
        for k, name in enumerate(objects.type):
            counts[f"{frame} {name} at {objects.location[k, 2]:.0f} m"] = int(inside[k])
            assert inside[k] >= (5 if name == "Car" else 1), (frame, name, inside[k])
        # lidar box -> KITTI label geometry -> lidar box
        location, dimensions, rotation_y = B.lidar_to_kitti_camera(boxes, velo_to_rect)
        np.testing.assert_allclose(location, objects.location, atol=1e-6)
        np.testing.assert_allclose(dimensions, objects.dimensions, atol=1e-6)
        np.testing.assert_allclose(B.wrap_angle(rotation_y - objects.rotation_y), 0.0, atol=1e-6)
        np.testing.assert_allclose(B.kitti_camera_to_lidar(location, dimensions, rotation_y, velo_to_rect), boxes,
                                   atol=1e-6)
        # yaw agrees with the usual axis-aligned formula to the calibration's tilt
        assert np.abs(B.wrap_angle(boxes[:, 6] + objects.rotation_y + math.pi / 2)).max() < 0.005
        # alpha as the labels have it (rounded to 0.01, and not exactly ry - atan2(x, z) in KITTI's labels)
        np.testing.assert_allclose(B.wrap_angle(B.observation_angle(objects.location, objects.rotation_y)
                                                - objects.alpha), 0.0, atol=0.02)
    print("lidar points in each labelled box:", counts)
    assert sum(" Car " in key for key in counts) == 2


def test_real_box_point_counts_match_mmdetection3d(realdata):
    """KITTI 000008 as mmdetection3d's info file has it: its ``num_lidar_pts`` (points of velodyne_reduced in each
    box, from mmdetection3d's own camera -> lidar conversion) against our conversion and count."""
    import pickle

    folder = realdata / "mmdetection3d" / "demo" / "data" / "kitti"
    if not (folder / "000008.pkl").is_file():
        pytest.skip(f"{folder} has no 000008.pkl")
    with open(folder / "000008.pkl", "rb") as handle:
        info = pickle.load(handle)["data_list"][0]
    r0_rect = np.asarray(info["images"]["R0_rect"])[:3, :3]
    velo_to_rect = B.kitti_velo_to_rect(r0_rect, np.asarray(info["lidar_points"]["Tr_velo_to_cam"])[:3])
    np.testing.assert_allclose(velo_to_rect, info["images"]["CAM2"]["lidar2cam"], atol=1e-6)
    instances = [item for item in info["instances"] if item["bbox_label_3d"] >= 0]  # DontCare: -1
    camera_boxes = np.array([item["bbox_3d"] for item in instances])  # x y z (bottom centre) l h w ry
    boxes = B.kitti_camera_to_lidar(camera_boxes[:, :3], camera_boxes[:, [4, 5, 3]], camera_boxes[:, 6],
                                    velo_to_rect)
    points = np.fromfile(folder / "000008.bin", dtype=np.float32).reshape(-1, 4)
    ours = B.points_in_boxes_mask(points, boxes).sum(axis=1)
    theirs = np.array([item["num_lidar_pts"] for item in instances])
    print("points per car, ours vs mmdetection3d:", list(zip(ours.tolist(), theirs.tolist())))
    assert len(ours) == 6 and (theirs > 50).all()
    # mmdetection3d turns the heading with -ry - pi/2, ignoring the calibration's small turn about the vertical
    # (about 1e-3 rad): a few points on the faces of a near box may differ
    assert (np.abs(ours - theirs) <= np.maximum(3, 0.005 * theirs)).all()
    alpha = B.observation_angle(camera_boxes[:, :3], camera_boxes[:, 6])
    # the labels' alpha is rounded to 0.01 and, for the nearest cars (4-6 m), differs by up to 0.035 from
    # ry - atan2(x, z)
    np.testing.assert_allclose(B.wrap_angle(alpha - [item["alpha"] for item in instances]), 0.0, atol=0.04)


def test_real_2d_boxes_agree_with_projected_corners(kitti_object_frames):
    from PIL import Image

    differences = {}
    for frame in FRAMES:
        calibration, objects, _, _ = _real_frame(kitti_object_frames, frame)
        with Image.open(kitti_object_frames / "image_2" / f"{frame}.png") as image:
            width, height = image.size
        corners = B.kitti_camera_corners(objects.location, objects.dimensions, objects.rotation_y)
        projected = B.project_boxes_to_image(corners, calibration["P2"], (height, width))
        for k, name in enumerate(objects.type):
            if name == "Car" and objects.occluded[k] == 0 and objects.truncated[k] == 0:
                difference = projected.clipped[k] - objects.bbox[k]
                differences[f"{frame} {name}"] = np.round(difference, 2).tolist()
                assert np.abs(difference).max() < 3.0, (frame, difference)
                assert projected.truncation[k] == 0
    print("projected minus labelled 2D box (left, top, right, bottom), pixels:", differences)
    assert len(differences) == 2


def test_prepare_kitti_object_on_real_frames(kitti_object_frames, tmp_path):
    from slidr.data.prepare_kitti_object import sample_boxes, sample_labels
    from slidr.data.projection import project_points

    root = kitti_object_frames.parent  # holds training/
    index_path = tmp_path / "kitti_object.npz"
    code = main(["prepare", "kitti-object", "--root", str(root), "--out", str(index_path)])
    assert code == 0
    from slidr.data.index import load_index

    index = load_index(index_path)
    assert index.format == "kitti_object" and len(index) == 3
    assert index.splits == {"train": [f"training/{frame}" for frame in FRAMES]}
    for sample, frame in zip(index.samples, FRAMES):
        assert sample["token"] == f"training/{frame}" and sample["label"] == f"training/label_2/{frame}.txt"
        calibration, objects, points, velo_to_rect = _real_frame(kitti_object_frames, frame)
        names, boxes = sample_boxes(sample)
        assert names == objects.type
        np.testing.assert_allclose(boxes, B.kitti_camera_to_lidar(objects.location, objects.dimensions,
                                                                    objects.rotation_y, velo_to_rect), atol=1e-12)
        labels = sample_labels(sample)
        np.testing.assert_allclose(labels.bbox, objects.bbox)
        np.testing.assert_array_equal(labels.occluded, objects.occluded)
        np.testing.assert_allclose(sample["calibration"]["R0_rect"], calibration["R0_rect"])
        # the index's camera reproduces P2 @ R0_rect @ Tr_velo_to_cam
        camera = sample["cameras"]["image_2"]
        kept, pixels = project_points(points, camera["lidar_to_camera"], camera["intrinsic"],
                                      (camera["height"], camera["width"]))
        homogeneous = np.column_stack([points[kept, :3], np.ones(len(kept))]) @ velo_to_rect.T
        uv = homogeneous @ calibration["P2"].T
        np.testing.assert_array_equal(pixels, np.round(uv[:, [1, 0]] / uv[:, 2:]).astype(np.int64))
        assert len(kept) > 10_000
    dontcare = index.samples[1]["dontcare"]["bbox"]
    assert np.asarray(dontcare).shape == (4, 4)


def test_prepare_kitti_object_reads_split_files_and_refuses_bad_input(kitti_object_frames, tmp_path, capsys):
    from slidr.data.prepare_kitti_object import prepare_kitti_object

    root = tmp_path / "kitti"
    training = root / "training"
    for sub in ("velodyne", "image_2", "calib", "label_2"):
        (training / sub).mkdir(parents=True)
        for source in (kitti_object_frames / sub).iterdir():
            (training / sub / source.name).symlink_to(source)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000002\n000004\n")
    (root / "ImageSets" / "val.txt").write_text("000001\n")
    index = prepare_kitti_object(root, tmp_path / "index.npz")
    assert index.splits == {"train": ["training/000000", "training/000002"], "val": ["training/000001"]}
    assert [index.samples[i]["frame"] for i in index.sample_indices("val")] == ["000001"]
    (root / "ImageSets" / "val.txt").write_text("frame one\n")
    with pytest.raises(DataError, match="val.txt: 'frame one' is not a frame id"):
        prepare_kitti_object(root, tmp_path / "index.npz")
    (root / "ImageSets" / "val.txt").write_text("000001\n")
    (training / "calib" / "000002.txt").unlink()
    with pytest.raises(DataError, match="000002.txt has no calibration file"):
        prepare_kitti_object(root, tmp_path / "index.npz")
    capsys.readouterr()
    code = main(["prepare", "kitti-object", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "i.npz")])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no training/velodyne" in err[0]


def test_conversions_agree_with_the_detection_evaluation(kitti_object_frames):
    """slidr.methods.detection_eval has its own label reader and camera-box conversions (camera boxes
    [x, y, z, l, h, w, ry]); both must describe the same boxes."""
    from slidr.methods import detection_eval as E

    rng = np.random.default_rng(6)
    for frame in FRAMES:
        calibration, objects, _, velo_to_rect = _real_frame(kitti_object_frames, frame)
        theirs = E.read_kitti_objects(kitti_object_frames / "label_2" / f"{frame}.txt")
        keep = np.array([name != "DontCare" for name in theirs.names])
        np.testing.assert_allclose(theirs.location[keep], objects.location)
        np.testing.assert_allclose(theirs.dimensions[keep], objects.dimensions)
        boxes = _random_boxes(rng, 10)
        location, dimensions, rotation_y = B.lidar_to_kitti_camera(boxes, velo_to_rect)
        camera = E.lidar_to_camera_boxes(boxes, velo_to_rect)
        np.testing.assert_allclose(camera[:, :3], location, atol=1e-9)
        np.testing.assert_allclose(camera[:, [4, 5, 3]], dimensions, atol=1e-9)
        np.testing.assert_allclose(B.wrap_angle(camera[:, 6] - rotation_y), 0.0, atol=1e-9)
        np.testing.assert_allclose(E.camera_to_lidar_boxes(camera, velo_to_rect), boxes, atol=1e-6)
