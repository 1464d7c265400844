"""BEV detector: scatter against a loop, targets -> decoding round trip, focal / L1 losses against brute force,
rotated NMS against shapely, predictions -> KITTI objects -> kitti_ap, the detector's shapes, an overfitting run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from slidr.config import (
    BackboneConfig,
    ConfigError,
    DetectionConfig,
    DetectionHeadConfig,
    load_config,
)
from slidr.data.voxelize import voxelize
from slidr.methods.detection import (
    REGRESSION_CODE,
    Detections,
    centernet_focal_loss,
    class_indices,
    decode_boxes,
    decode_detections,
    detection_loss,
    encode_boxes,
    encode_targets,
    gaussian_radius,
    heatmap_peaks,
    regression_loss,
    rotated_nms,
    to_kitti_objects,
)
from slidr.methods.detection_eval import (
    KittiObjects,
    camera_to_lidar_boxes,
    kitti_ap,
    lidar_bev_overlap,
    lidar_to_camera_boxes,
    max_reachable_ap,
    project_boxes_to_image,
    read_kitti_folder,
)
from slidr.models.detection import BevGrid, Detector, bev_scatter, build_detector
from slidr.models.sparse import SparseTensor
from slidr.models.unet import build_backbone
from test_sparse import one_thread  # noqa: F401 - autouse fixture: one torch thread

KITTI_GRID = BevGrid(0.0, -40.0, -3.0, 70.4, 40.0, 1.0, 0.4)
# KITTI-like calibration: lidar x forward, y left, z up -> camera x right, y down, z forward, the lidar 0.27 m
# behind and 0.08 m above the camera; P2 of KITTI's image_2
LIDAR_TO_CAMERA = np.array([[0.0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]])
P2 = np.array([[721.5, 0, 609.6, 44.9], [0, 721.5, 172.9, 0.2], [0, 0, 1, 0.003]])
IMAGE_SIZE = (1242, 375)
SIZES = {0: (3.9, 1.6, 1.55), 1: (0.8, 0.6, 1.75), 2: (1.8, 0.6, 1.75)}  # Car, Pedestrian, Cyclist (l, w, h)


def wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------------------------
# BEV scatter
# --------------------------------------------------------------------------------------------------------------
def scatter_loop(features, xyz, batch, batch_size, grid, pooling):
    """Reference: a dictionary of cells filled point by point."""
    cells: dict = {}
    for i in range(len(xyz)):
        x, y, z = (float(v) for v in xyz[i, :3])
        col, row = math.floor((x - grid.x_min) / grid.cell), math.floor((y - grid.y_min) / grid.cell)
        if not (0 <= col < grid.cols and 0 <= row < grid.rows and grid.z_min <= z <= grid.z_max):
            continue
        cells.setdefault((int(batch[i]), row, col), []).append(i)
    out = torch.zeros(batch_size, features.shape[1] + 4, grid.rows, grid.cols, dtype=torch.float64)
    for (b, row, col), members in cells.items():
        values = features[members].double()
        out[b, :-4, row, col] = values.max(0).values if pooling == "max" else values.mean(0)
        heights = [(float(xyz[i, 2]) - grid.z_min) / (grid.z_max - grid.z_min) for i in members]
        out[b, -4:, row, col] = torch.tensor([math.log1p(len(members)), min(heights), sum(heights) / len(heights),
                                              max(heights)], dtype=torch.float64)
    return out


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_bev_scatter_matches_a_loop(pooling):
    generator = torch.Generator().manual_seed(0)
    grid = BevGrid(-2.0, -1.5, -1.0, 2.0, 2.5, 1.0, 0.5)  # 8 x 8 cells; borders exact in float32
    xyz = torch.rand(400, 4, generator=generator) * torch.tensor([5.0, 5.0, 2.6, 1.0]) - torch.tensor(
        [2.5, 2.0, 1.3, 0.0])  # some points outside the range in x, y and z
    xyz[:4, :3] = torch.tensor([[-2.0, -1.5, -1.0], [1.9999, 2.4999, 1.0], [2.0, 0.0, 0.0], [0.0, 2.5, 0.0]])
    features = torch.randn(400, 6, generator=generator, requires_grad=True)
    batch = torch.randint(0, 3, (400,), generator=generator)
    batch[batch == 2] = 0  # scan 2 is empty
    result = bev_scatter(features, xyz, batch, 3, grid, pooling=pooling)
    expected = scatter_loop(features.detach(), xyz, batch, 3, grid, pooling)
    assert result.shape == (3, 10, 8, 8)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(result[2] == 0)
    assert int(result[:, -4].expm1().round().sum()) == sum(
        1 for i in range(400) if -2 <= xyz[i, 0] < 2 and -1.5 <= xyz[i, 1] < 2.5 and -1 <= xyz[i, 2] <= 1)
    # gradients reach the pooled points only
    result[:, :-4].sum().backward()
    assert features.grad is not None
    outside = (xyz[:, 0] < -2) | (xyz[:, 0] >= 2) | (xyz[:, 1] < -1.5) | (xyz[:, 1] >= 2.5) | (xyz[:, 2].abs() > 1)
    assert torch.all(features.grad[outside] == 0) and torch.any(features.grad[~outside] != 0)
    without = bev_scatter(features, xyz, batch, 3, grid, pooling=pooling, geometric=False)
    torch.testing.assert_close(without, result[:, :-4])


# --------------------------------------------------------------------------------------------------------------
# Targets and decoding
# --------------------------------------------------------------------------------------------------------------
def test_gaussian_radius_follows_centernet_rule():
    # a car footprint of 10 x 4.5 cells, overlap 0.1, by hand: candidates (14.5 + sqrt(14.5^2 - 4 * 36.818)) / 2
    # = 11.218, (29 + sqrt(29^2 - 16 * 40.5)) / 2 = 21.446, (-2.9 + sqrt(2.9^2 + 4 * 0.4 * 40.5)) / 2 = 2.828
    assert gaussian_radius(10.0, 4.5, 0.1) == pytest.approx(2.8282, abs=1e-4)
    # CenterNet's default overlap 0.7 on a 20 x 20 box: min(7.84..., 22.4..., 3.41...) by the same rule
    b3, c3 = -2 * 0.7 * 40, (0.7 - 1) * 400
    assert gaussian_radius(20.0, 20.0, 0.7) == pytest.approx((b3 + math.sqrt(b3**2 - 4 * 2.8 * c3)) / 2)


def random_boxes(rng, count, grid, margin=0.0):
    labels = rng.integers(0, 3, count)
    sizes = np.array([SIZES[int(k)] for k in labels]) * rng.uniform(0.8, 1.2, (count, 3))
    centre = np.column_stack([rng.uniform(grid.x_min + margin, grid.x_max - margin, count),
                              rng.uniform(grid.y_min + margin, grid.y_max - margin, count),
                              rng.uniform(-2.0, 0.0, count)])
    return np.column_stack([centre, sizes, rng.uniform(-np.pi, np.pi, count)]), labels


def perfect_outputs(targets, grid, batch_size, num_classes=3):
    """The maps a perfect detector would output for these targets."""
    probability = targets.heatmap.clamp(1e-6, 1 - 1e-6)
    regression = torch.zeros(batch_size, 8, grid.rows * grid.cols)
    regression[targets.batch, :, targets.cell] = targets.regression
    return {"heatmap": torch.logit(probability), "regression": regression.view(batch_size, 8, grid.rows, grid.cols)}


def test_targets_decode_back_to_the_boxes():
    rng = np.random.default_rng(1)
    grid = KITTI_GRID
    boxes_a, labels_a = random_boxes(rng, 25, grid)
    # at the borders: first and last cells of both axes, and just outside
    border = np.array([[0.0, -40.0, -1, 4, 1.8, 1.5, 0.2], [70.399, 39.999, -1, 0.8, 0.6, 1.7, -3.0],
                       [70.4, 0.0, -1, 4, 1.8, 1.5, 0.0], [10.0, -40.01, -1, 4, 1.8, 1.5, 0.0],
                       [-0.001, 3.0, -1, 4, 1.8, 1.5, 0.0]])
    # two objects in one cell (the car wins, whatever the order), and two in neighbouring cells
    shared = np.array([[20.05, 5.05, -1, 0.7, 0.6, 1.7, 0.0], [20.3, 5.15, -1, 4.0, 1.7, 1.5, 1.0],
                       [30.1, -5.1, -1, 0.8, 0.6, 1.7, 0.5], [30.5, -5.1, -1, 0.8, 0.6, 1.7, 0.5]])
    boxes_a = np.concatenate([boxes_a, border, shared])
    labels_a = np.concatenate([labels_a, [0, 1, 0, 0, 0], [1, 0, 1, 1]])
    boxes_b, labels_b = random_boxes(rng, 10, grid, margin=1.0)
    labels_b[:2] = -1  # not targets (Van, DontCare)
    targets = encode_targets([torch.tensor(boxes_a), boxes_b], [labels_a, labels_b], grid, 3)
    assert targets.num_outside == 3 and targets.num_shared_cell == 1
    assert targets.num_objects == len(boxes_a) - 4 + len(boxes_b) - 2
    assert targets.heatmap.shape == (2, 3, 200, 176)
    assert int((targets.heatmap == 1).sum()) == targets.num_objects and float(targets.heatmap.min()) == 0
    expected = {0: (boxes_a[np.r_[0:27, 31:34]], labels_a[np.r_[0:27, 31:34]]),
                1: (boxes_b[2:], labels_b[2:])}

    detections = decode_detections(**perfect_outputs(targets, grid, 2), grid=grid, top_k=1000, score_threshold=0.5,
                                   nms_iou=None)
    for b, (boxes, labels) in expected.items():
        found = detections[b]
        assert len(found.boxes) == len(boxes)
        order_found = np.lexsort((found.boxes[:, 1], found.boxes[:, 0]))
        order_expected = np.lexsort((boxes[:, 1], boxes[:, 0]))
        got, want = found.boxes[order_found], boxes[order_expected]
        np.testing.assert_array_equal(found.labels[order_found], labels[order_expected])
        np.testing.assert_allclose(got[:, :3], want[:, :3], atol=2e-5)  # float32 offsets: ~1e-6 of a cell
        np.testing.assert_allclose(got[:, 3:6], want[:, 3:6], rtol=1e-6)
        assert np.abs(wrap(got[:, 6] - want[:, 6])).max() < 1e-6
        assert np.all(found.scores > 0.99) and np.all(np.diff(found.scores) <= 0)


def test_regression_layout_is_one_everywhere():
    from slidr.config import DETECTION_REGRESSION_CHANNELS
    from slidr.models.detection import REGRESSION_HEADS

    assert sum(count for _, count in REGRESSION_HEADS) == DETECTION_REGRESSION_CHANNELS == len(REGRESSION_CODE)
    assert len(DetectionHeadConfig().code_weights) == DETECTION_REGRESSION_CHANNELS


def test_encode_decode_boxes_are_inverse():
    rng = np.random.default_rng(2)
    boxes = torch.tensor(random_boxes(rng, 200, KITTI_GRID)[0])
    row, col, inside, regression = encode_boxes(boxes, KITTI_GRID)
    assert inside.all() and regression.shape == (200, len(REGRESSION_CODE))
    assert torch.all((regression[:, :2] >= 0) & (regression[:, :2] < 1))
    back = decode_boxes(row, col, regression, KITTI_GRID)
    torch.testing.assert_close(back[:, :6], boxes[:, :6], rtol=1e-12, atol=1e-12)
    assert torch.all(torch.abs(wrap(back[:, 6] - boxes[:, 6])) < 1e-12)


def test_heatmap_peaks_keep_local_maxima_only():
    heatmap = torch.full((1, 2, 5, 6), -5.0)
    heatmap[0, 0, 1, 1] = 3.0
    heatmap[0, 0, 1, 2] = 2.0  # a neighbour of a higher cell: not a peak
    heatmap[0, 0, 3, 4] = 1.0
    heatmap[0, 1, 1, 2] = 2.5  # the other class's channel: a peak
    scores, classes, cells = heatmap_peaks(heatmap, top_k=3)
    assert classes.tolist() == [[0, 1, 0]] and cells.tolist() == [[1 * 6 + 1, 1 * 6 + 2, 3 * 6 + 4]]
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([3.0, 2.5, 1.0])))


def test_encode_targets_rejects_bad_boxes():
    from slidr.errors import SlidrError

    good = np.array([[10.0, 0, -1, 4, 1.8, 1.5, 0]])
    with pytest.raises(SlidrError, match="size <= 0"):
        encode_targets([good * np.array([1, 1, 1, 0, 1, 1, 1])], [[0]], KITTI_GRID, 3)
    with pytest.raises(SlidrError, match="label 3"):
        encode_targets([good], [[3]], KITTI_GRID, 3)
    with pytest.raises(SlidrError, match="1 boxes but 2 labels"):
        encode_targets([good], [[0, 1]], KITTI_GRID, 3)
    empty = encode_targets([np.zeros((0, 7))], [np.zeros(0)], KITTI_GRID, 3)
    assert empty.num_objects == 0 and float(empty.heatmap.abs().sum()) == 0
    assert class_indices(["Car", "van", "CYCLIST", "DontCare"], ("Car", "Pedestrian", "Cyclist")).tolist() == [
        0, -1, 2, -1]


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------
def test_focal_loss_matches_brute_force():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64) * 4
    logits[0, 0, 0, 0] = 30.0  # saturated: the clamp keeps the loss finite
    logits[1, 2, 3, 4] = -30.0
    target = torch.rand(2, 3, 4, 5, generator=generator, dtype=torch.float64) * 0.9
    target[0, 1, 2, 3] = target[1, 0, 0, 0] = target[1, 2, 3, 4] = 1.0
    loss, positives = centernet_focal_loss(logits, target)
    total = 0.0
    for value, gt in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = min(max(1 / (1 + math.exp(-value)), 1e-4), 1 - 1e-4)
        total += -math.log(p) * (1 - p) ** 2 if gt == 1 else -math.log(1 - p) * p**2 * (1 - gt) ** 4
    assert positives == 3
    assert float(loss) == pytest.approx(total / 3, rel=1e-5)
    no_positive, count = centernet_focal_loss(logits, target * 0.5)
    assert count == 0 and float(no_positive) > 0  # normalised by 1, not 0


def test_regression_and_detection_loss_match_brute_force():
    rng = np.random.default_rng(4)
    grid = BevGrid(0.0, 0.0, -3.0, 8.0, 8.0, 1.0, 0.5)
    boxes = [np.array([[1.3, 2.2, -1.0, 4.0, 1.8, 1.5, 0.3], [6.1, 6.9, -0.5, 0.8, 0.6, 1.7, -2.0]]),
             np.array([[4.4, 1.1, -1.2, 1.8, 0.6, 1.7, 1.0]])]
    targets = encode_targets(boxes, [[0, 1], [2]], grid, 3)
    regression = torch.tensor(rng.normal(size=(2, 8, 16, 16)), dtype=torch.float32, requires_grad=True)
    heatmap = torch.tensor(rng.normal(size=(2, 3, 16, 16)), dtype=torch.float32, requires_grad=True)
    weights = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0]
    total = 0.0
    for b, scan in enumerate(boxes):
        for box in scan:
            col, row = int(box[0] // 0.5), int(box[1] // 0.5)
            code = [box[0] / 0.5 - col, box[1] / 0.5 - row, box[2], *np.log(box[3:6]), np.sin(box[6]), np.cos(box[6])]
            predicted = regression[b, :, row, col].detach().tolist()
            total += sum(w * abs(p - c) for w, p, c in zip(weights, predicted, code))
    l1 = regression_loss(regression, targets, weights)
    assert float(l1.detach()) == pytest.approx(total / 3, rel=1e-5)
    loss, stats = detection_loss({"heatmap": heatmap, "regression": regression}, targets, 1.5, 0.25, weights)
    focal, _ = centernet_focal_loss(heatmap, targets.heatmap)
    assert float(loss.detach()) == pytest.approx(1.5 * float(focal.detach()) + 0.25 * total / 3, rel=1e-5)
    assert stats["objects"] == 3 and not stats["empty"]
    loss.backward()
    assert torch.isfinite(regression.grad).all() and int((regression.grad != 0).any(1).sum()) == 3
    # no object: the regression part is an exact zero, still on the graph
    empty = encode_targets([np.zeros((0, 7))] * 2, [np.zeros(0)] * 2, grid, 3)
    loss, stats = detection_loss({"heatmap": heatmap, "regression": regression}, empty)
    assert stats["empty"] and stats["regression_loss"] == 0.0
    loss.backward()


# --------------------------------------------------------------------------------------------------------------
# Rotated BEV NMS
# --------------------------------------------------------------------------------------------------------------
def footprint(box):
    cos, sin = math.cos(box[6]), math.sin(box[6])
    corners = [(u, v) for u, v in ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))]
    return Polygon([(box[0] + cos * u * box[3] - sin * v * box[4], box[1] + sin * u * box[3] + cos * v * box[4])
                    for u, v in corners])


def shapely_iou(a, b):
    pa, pb = footprint(a), footprint(b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def nms_reference(boxes, scores, threshold, labels=None):
    """Plain greedy NMS with shapely polygons."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(shapely_iou(boxes[i], boxes[k]) <= threshold or (labels is not None and labels[i] != labels[k])
               for k in kept):
            kept.append(i)
    return kept


@pytest.mark.slow
def test_lidar_bev_overlap_matches_shapely():
    rng = np.random.default_rng(5)
    boxes = np.column_stack([rng.uniform(0, 6, (30, 2)), rng.uniform(-1, 0, 30), rng.uniform(0.5, 4, (30, 3)),
                             rng.uniform(-np.pi, np.pi, 30)])
    overlaps = lidar_bev_overlap(boxes, boxes[:12])
    expected = np.array([[shapely_iou(a, b) for b in boxes[:12]] for a in boxes])
    np.testing.assert_allclose(overlaps, expected, atol=1e-9)
    assert np.count_nonzero((expected > 0.05) & (expected < 0.95)) > 20  # the boxes do overlap partly


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("threshold", [0.01, 0.3])
def test_rotated_nms_matches_brute_force(per_class, threshold):
    rng = np.random.default_rng(6)
    centres = rng.uniform(0, 20, (8, 2))
    boxes = np.column_stack([centres[rng.integers(0, 8, 60)] + rng.normal(0, 0.6, (60, 2)), rng.uniform(-1, 0, 60),
                             rng.uniform(0.6, 4.5, (60, 3)), rng.uniform(-np.pi, np.pi, 60)])
    scores = rng.uniform(0, 1, 60)
    scores[5] = scores[9]  # a tie: the earlier box first
    labels = rng.integers(0, 3, 60)
    kept = rotated_nms(boxes, scores, threshold, labels if per_class else None)
    assert kept.tolist() == nms_reference(boxes, scores, threshold, labels if per_class else None)
    assert 5 < len(kept) < 60


# --------------------------------------------------------------------------------------------------------------
# To KITTI objects and kitti_ap
# --------------------------------------------------------------------------------------------------------------
def random_frame(rng, count):
    """Lidar boxes in the camera's view, one class each, centres at least 5 m apart (footprints never overlap)."""
    centres: list[np.ndarray] = []
    while len(centres) < count:
        x = rng.uniform(5, 45)
        candidate = np.array([x, rng.uniform(-0.6, 0.6) * x])
        if all(np.hypot(*(candidate - c)) > 5 for c in centres):
            centres.append(candidate)
    labels = rng.integers(0, 3, count)
    sizes = np.array([SIZES[int(k)] for k in labels]) * rng.uniform(0.9, 1.1, (count, 3))
    boxes = np.column_stack([np.array(centres), -1.7 + sizes[:, 2] / 2, sizes, rng.uniform(-np.pi, np.pi, count)])
    return boxes, labels


def ground_truth(boxes, labels, classes=("Car", "Pedestrian", "Cyclist")):
    camera = lidar_to_camera_boxes(boxes, LIDAR_TO_CAMERA)
    return KittiObjects.create(np.array(classes)[labels], project_boxes_to_image(camera, P2, IMAGE_SIZE),
                               camera[:, [4, 5, 3]], camera[:, :3], camera[:, 6])


@pytest.mark.slow
def test_perfect_predictions_reach_the_maximum_ap():
    rng = np.random.default_rng(7)
    frames = [random_frame(rng, 8) for _ in range(20)]
    gt = [ground_truth(boxes, labels) for boxes, labels in frames]
    classes = ("Car", "Pedestrian", "Cyclist")
    detections = []
    for boxes, labels in frames:
        # the truth, plus one box behind the camera and one far to the side: dropped as outside the image
        extra = np.array([[-8.0, 0, -1, 4, 1.8, 1.5, 0], [10.0, 30.0, -1, 4, 1.8, 1.5, 0]])
        found = Detections(np.concatenate([boxes, extra]), np.concatenate([rng.uniform(0.5, 1, len(boxes)),
                                                                           [0.9, 0.9]]),
                           np.concatenate([labels, [0, 0]]))
        objects = to_kitti_objects(found, classes, LIDAR_TO_CAMERA, P2, IMAGE_SIZE)
        assert len(objects) == len(boxes)
        np.testing.assert_allclose(objects.alpha, gt[len(detections)].alpha, atol=1e-9)
        detections.append(objects)
    kept = to_kitti_objects(found, classes, LIDAR_TO_CAMERA, P2, IMAGE_SIZE, drop_outside_image=False)
    assert len(kept) == len(found.boxes)
    result = kitti_ap(gt, detections, metrics=("bbox", "bev", "3d", "aos"))
    for metric in ("bbox", "bev", "3d", "aos"):
        for name in classes:
            for difficulty, value in result["ap"][metric][name].items():
                count = result["num_gt"][name][difficulty]
                assert count > 0 and value == pytest.approx(max_reachable_ap(count)), (metric, name, difficulty)


def test_targets_to_kitti_ap_through_decoding():
    """Encode the truth, decode the perfect maps (with the default NMS), convert and score: the maximum AP."""
    rng = np.random.default_rng(8)
    frames = [random_frame(rng, 8) for _ in range(20)]
    classes = ["Car", "Pedestrian", "Cyclist"]
    cfg = DetectionHeadConfig()
    grid = BevGrid.from_config(cfg)
    gt, detections = [], []
    for start in range(0, 20, 4):
        chunk = frames[start:start + 4]
        targets = encode_targets([b for b, _ in chunk], [k for _, k in chunk], grid, 3)
        decoded = decode_detections(**perfect_outputs(targets, grid, 4), grid=grid, top_k=cfg.top_k,
                                    score_threshold=cfg.score_threshold, nms_iou=cfg.nms_iou,
                                    nms_per_class=cfg.nms_per_class, max_detections=cfg.max_detections)
        for (boxes, labels), found in zip(chunk, decoded):
            assert len(found.boxes) == len(boxes)
            gt.append(ground_truth(boxes, labels))
            detections.append(to_kitti_objects(found, classes, LIDAR_TO_CAMERA, P2, IMAGE_SIZE))
    result = kitti_ap(gt, detections)
    assert result["map_moderate"] == {"bbox": pytest.approx(100.0), "bev": pytest.approx(100.0),
                                      "3d": pytest.approx(100.0)}


def test_real_kitti_labels_round_trip(realdata):
    """Real KITTI labels -> lidar boxes -> targets -> perfect maps -> decoding -> KITTI objects: AP as the labels'."""
    from test_detection_eval import read_calibration

    root = realdata / "kitti_object_vis" / "data" / "object" / "training"
    if not (root / "label_2").is_dir():
        pytest.skip(f"{root} has no label_2")
    labels = read_kitti_folder(root / "label_2")
    classes = ("Car", "Pedestrian", "Cyclist")
    grid = KITTI_GRID
    detections = []
    for frame, objects in labels.items():
        projection, lidar_to_camera = read_calibration(root / "calib" / f"{frame}.txt")
        keep = class_indices(objects.names, classes) >= 0
        boxes = camera_to_lidar_boxes(objects.camera_boxes()[keep], lidar_to_camera)
        targets = encode_targets([boxes], [class_indices(objects.names, classes)[keep]], grid, 3)
        found = decode_detections(**perfect_outputs(targets, grid, 1), grid=grid)[0]
        result = to_kitti_objects(found, classes, lidar_to_camera, projection, (1242, 375))
        np.testing.assert_allclose(np.sort(result.location, 0), np.sort(objects.location[keep], 0), atol=1e-4)
        detections.append(result)
    result = kitti_ap(list(labels.values()), detections, recall_positions=11)
    for name in classes:
        for difficulty, value in result["ap"]["3d"][name].items():
            count = result["num_gt"][name][difficulty]
            assert value == (None if count == 0 else pytest.approx(max_reachable_ap(count, 11)))


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------
def test_detection_config_loads_and_validates():
    cfg = load_config(DetectionConfig, overrides=["head.cell_size=0.32", "data.label_fraction=0.05",
                                                  "head.nms_iou=null", "pretrained=runs/x/pretrained.pt"])
    assert cfg.head.grid_shape == (250, 220) and cfg.head.nms_iou is None and cfg.data.label_fraction == 0.05
    assert DetectionHeadConfig().grid_shape == (200, 176)
    with pytest.raises(ConfigError, match="cell_size 0.3 does not divide the x range"):
        load_config(DetectionConfig, overrides=["head.cell_size=0.3"])
    with pytest.raises(ConfigError, match="code_weights must be 8"):
        load_config(DetectionConfig, overrides=["head.code_weights=[1, 1]"])
    with pytest.raises(ConfigError, match="point_range must have each max > min"):
        load_config(DetectionConfig, overrides=["head.point_range=[0, -40, 1, 70.4, 40, -3]"])
    with pytest.raises(ConfigError, match="neck_channels"):
        load_config(DetectionConfig, overrides=["head.neck_layers=[2]"])
    with pytest.raises(ConfigError, match="unknown key 'clases'"):
        load_config(DetectionConfig, overrides=["head.clases=[Car]"])


# --------------------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------------------
SMALL_HEAD = dict(point_range=[0.0, -12.8, -3.0, 25.6, 12.8, 1.0], cell_size=0.4, neck_channels=[32, 64],
                  neck_layers=[1, 1], upsample_channels=32, head_channels=32)


def voxel_batch(scans):
    """Batch of point clouds (N_b, 4) as the collate functions build it (cylindrical voxels)."""
    coords, feats, inverse, points, point_batch, offset = [], [], [], [], [], 0
    for b, scan in enumerate(scans):
        voxel_coords, kept, inverse_map = voxelize(scan, "cylindrical", 0.1, 1.0)
        coords.append(np.column_stack([np.full(len(voxel_coords), b, np.int32), voxel_coords]))
        feats.append(scan[kept, 3:4])
        inverse.append(inverse_map + offset)
        offset += len(voxel_coords)
        points.append(scan)
        point_batch.append(np.full(len(scan), b))
    voxels = SparseTensor(torch.from_numpy(np.concatenate(coords)), torch.from_numpy(np.concatenate(feats)))
    return (voxels, torch.from_numpy(np.concatenate(points)), torch.from_numpy(np.concatenate(inverse)),
            torch.from_numpy(np.concatenate(point_batch)), len(scans))


def box_surface_points(box, count, rng):
    """Points on the four sides and the top of a lidar box (a lidar sees no bottom)."""
    local = rng.uniform(-0.5, 0.5, (count, 3)) * box[3:6]
    face = rng.integers(0, 5, count)
    local[face == 0, 0], local[face == 1, 0] = box[3] / 2, -box[3] / 2
    local[face == 2, 1], local[face == 3, 1] = box[4] / 2, -box[4] / 2
    local[face == 4, 2] = box[5] / 2
    cos, sin = math.cos(box[6]), math.sin(box[6])
    xy = np.column_stack([cos * local[:, 0] - sin * local[:, 1], sin * local[:, 0] + cos * local[:, 1]])
    return np.column_stack([xy + box[:2], local[:, 2] + box[2]])


def tiny_scene(seed=0):
    """Three boxes (a car, a pedestrian, a cyclist) on a ground plane: points (N, 4), boxes (3, 7), labels (3,)."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[12.0, -3.0, 0, *SIZES[0], 0.4], [8.0, 2.5, 0, *SIZES[1], -1.2], [17.0, 4.0, 0, *SIZES[2], 2.0]])
    boxes[:, 2] = -1.7 + boxes[:, 5] / 2
    parts = [box_surface_points(box, n, rng) for box, n in zip(boxes, (400, 100, 150))]
    ground = np.column_stack([rng.uniform(2, 25, 1500), rng.uniform(-12, 12, 1500), rng.normal(-1.7, 0.02, 1500)])
    xyz = np.concatenate(parts + [ground])
    intensity = np.concatenate([np.full(len(p), 0.6) for p in parts] + [np.full(len(ground), 0.1)])
    return np.column_stack([xyz, intensity]).astype(np.float32), boxes, np.array([0, 1, 2])


def small_detector(seed=0):
    torch.manual_seed(seed)
    backbone = build_backbone(BackboneConfig(name="minkunet14_half", normalize_output=False))
    return build_detector(backbone, DetectionHeadConfig(**SMALL_HEAD))


def test_detector_shapes_gradients_and_odd_grids():
    detector = small_detector()
    assert isinstance(detector, Detector) and detector.head.grid.shape == (64, 64)
    scene, boxes, labels = tiny_scene()
    batch = voxel_batch([scene, scene[::2].copy()])
    outputs = detector(*batch)
    assert outputs["heatmap"].shape == (2, 3, 64, 64) and outputs["regression"].shape == (2, 8, 64, 64)
    # the heatmap starts at the prior probability 0.1 (CenterNet's bias init)
    assert abs(float(torch.sigmoid(outputs["heatmap"].detach()).mean()) - 0.1) < 0.05
    targets = encode_targets([boxes, boxes], [labels, labels], detector.grid, 3)
    loss, _ = detection_loss(outputs, targets)
    loss.backward()
    assert detector.model_points.final.weight.grad is None
    assert all(p.grad is not None for name, p in detector.named_parameters() if not name.startswith(
        "model_points.final"))
    # grids of odd sizes: the neck's stride-2 block is cropped back
    odd = build_detector(build_backbone(BackboneConfig(name="minkunet14_half", normalize_output=False)),
                         DetectionHeadConfig(**{**SMALL_HEAD, "point_range": [0.0, -12.4, -3.0, 25.2, 12.4, 1.0]}))
    assert odd(*batch)["heatmap"].shape == (2, 3, 62, 63)


def overfit(steps, seed=0):
    detector = small_detector(seed)
    scene, boxes, labels = tiny_scene(seed)
    batch = voxel_batch([scene])
    targets = encode_targets([boxes], [labels], detector.grid, 3)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = detection_loss(detector(*batch), targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return detector, batch, boxes, labels, losses


def test_detector_loss_falls_on_a_tiny_scene():
    *_, losses = overfit(10)
    assert np.isfinite(losses).all() and min(losses[-3:]) < 0.25 * losses[0]


@pytest.mark.slow
def test_detector_overfits_a_tiny_scene():
    detector, batch, boxes, labels, losses = overfit(150)
    # with one scene the running statistics of batch norm lag behind the weights: recompute them on the scene
    for module in detector.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the scene's statistics
    with torch.no_grad():
        detector(*batch)
    detector.eval()
    with torch.no_grad():
        outputs = detector(*batch)
    found = decode_detections(outputs["heatmap"], outputs["regression"], detector.grid)[0]
    classes = ("Car", "Pedestrian", "Cyclist")
    # 41 copies of the frame: enough ground truths per class for the official sampling to reach 100
    gt = [ground_truth(boxes, labels)] * 41
    result = kitti_ap(gt, [to_kitti_objects(found, classes, LIDAR_TO_CAMERA, P2, IMAGE_SIZE)] * 41)
    assert result["map_moderate"]["bev"] == pytest.approx(100.0), (losses[-1], found)
    assert result["map_moderate"]["3d"] > 60, (losses[-1], found)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detector_on_cuda_agrees_with_cpu():
    detector = small_detector().eval()
    scene, boxes, labels = tiny_scene()
    voxels, points, inverse, point_batch, size = voxel_batch([scene])
    with torch.no_grad():
        expected = detector(voxels, points, inverse, point_batch, size)
        on_gpu = detector.cuda()(SparseTensor(voxels.coords.cuda(), voxels.feats.cuda()), points.cuda(),
                                 inverse.cuda(), point_batch.cuda(), size)
    for key in ("heatmap", "regression"):
        torch.testing.assert_close(on_gpu[key].cpu(), expected[key], rtol=1e-3, atol=1e-3)
    targets = encode_targets([torch.tensor(boxes, device="cuda")], [labels], detector.grid, 3)
    assert targets.heatmap.is_cuda and targets.regression.is_cuda
    loss, _ = detection_loss(on_gpu, targets)
    assert torch.isfinite(loss)
    found = decode_detections(on_gpu["heatmap"], on_gpu["regression"], detector.grid, score_threshold=0.0)
    reference = decode_detections(expected["heatmap"], expected["regression"], detector.grid, score_threshold=0.0)
    np.testing.assert_allclose(found[0].scores[:10], reference[0].scores[:10], atol=1e-3)
