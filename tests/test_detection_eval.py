"""KITTI detection evaluation: hand-computed cases of the official protocol, overlaps against shapely and Monte-Carlo
volumes, and agreement with a plain transcription of the devkit (tests/reference/kitti_eval_reference.py) on random
scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference import kitti_eval_reference as reference
from slidr.config import ConfigError
from slidr.errors import DataError, SlidrError
from slidr.methods.detection_eval import (
    KittiObjects,
    bev_corners,
    bev_overlap,
    box3d_overlap,
    camera_to_lidar_boxes,
    format_ap_table,
    format_kitti_objects,
    image_box_overlap,
    kitti_ap,
    lidar_to_camera_boxes,
    max_reachable_ap,
    observation_angle,
    parse_kitti_objects,
    project_boxes_to_image,
    read_kitti_folder,
    read_kitti_objects,
    score_thresholds,
    write_kitti_objects,
)

ALL_METRICS = ("bbox", "bev", "3d", "aos")
SIZES = {"Car": (1.5, 1.6, 3.9), "Van": (2.2, 1.9, 5.0), "Truck": (3.2, 2.5, 10.0), "Pedestrian": (1.75, 0.6, 0.8),
         "Person_sitting": (1.3, 0.6, 0.8), "Cyclist": (1.7, 0.6, 1.8)}


# --- building frames --------------------------------------------------------------------------------------------
def obj(name="Car", x=0.0, z=20.0, y=1.6, ry=0.3, bbox=(100.0, 100.0, 200.0, 160.0), dims=None, trunc=0.0, occ=0,
        alpha=None):
    """One object as a dict; the default is an easy car (60 px tall, unoccluded, untruncated)."""
    return dict(name=name, loc=(x, y, z), ry=ry, bbox=bbox, dims=dims or SIZES.get(name, (1.5, 1.6, 3.9)),
                trunc=trunc, occ=occ, alpha=alpha)


def dontcare(bbox):
    return dict(name="DontCare", loc=(-1000.0, -1000.0, -1000.0), ry=-10.0, bbox=bbox, dims=(-1.0, -1.0, -1.0),
                trunc=-1.0, occ=-1, alpha=-10.0)


def objects(rows, scores=None) -> KittiObjects:
    n = len(rows)
    location = np.array([r["loc"] for r in rows], dtype=float).reshape(n, 3)
    rotation = np.array([r["ry"] for r in rows], dtype=float)
    alpha = np.array([np.nan if r.get("alpha") is None else r["alpha"] for r in rows], dtype=float)
    alpha = np.where(np.isnan(alpha), observation_angle(location, rotation), alpha)
    return KittiObjects(names=[r["name"] for r in rows], truncated=[r.get("trunc", 0.0) for r in rows],
                        occluded=[r.get("occ", 0) for r in rows], alpha=alpha,
                        bbox=np.array([r["bbox"] for r in rows], dtype=float).reshape(n, 4),
                        dimensions=np.array([r["dims"] for r in rows], dtype=float).reshape(n, 3),
                        location=location, rotation_y=rotation,
                        score=None if scores is None else np.asarray(scores, dtype=float))


def one_car_per_frame(n, detected=None, scores=None, **car):
    """n frames holding one car each; detections: an exact copy of the car in the frames listed in ``detected``
    (default all), scored ``scores[i]`` (default decreasing with i)."""
    detected = set(range(n)) if detected is None else set(detected)
    scores = np.linspace(0.9, 0.1, n) if scores is None else scores
    gts = [objects([obj(**car)]) for _ in range(n)]
    dets = [objects([obj(**car)], [scores[i]]) if i in detected else objects([], []) for i in range(n)]
    return gts, dets


def add(frames, i, rows, scores=None):
    """Frames with the objects of ``rows`` appended to frame i."""
    frames = list(frames)
    old = frames[i]
    old_rows = [dict(name=old.names[k], loc=tuple(old.location[k]), ry=old.rotation_y[k], bbox=tuple(old.bbox[k]),
                     dims=tuple(old.dimensions[k]), trunc=old.truncated[k], occ=int(old.occluded[k]),
                     alpha=old.alpha[k]) for k in range(len(old))]
    new_scores = None if old.score is None else list(old.score) + list(scores)
    frames[i] = objects(old_rows + rows, new_scores)
    return frames


def ap(result, metric="3d", name="Car"):
    return result["ap"][metric][name]


# --- hand-made cases --------------------------------------------------------------------------------------------
def test_perfect_detections_score_100_everywhere():
    gts, dets = one_car_per_frame(50)
    for positions in (40, 11):
        result = kitti_ap(gts, dets, metrics=ALL_METRICS, recall_positions=positions)
        for metric in ALL_METRICS:
            assert ap(result, metric) == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
            assert result["ap"][metric]["Pedestrian"] == {"easy": None, "moderate": None, "hard": None}
            assert result["map_moderate"][metric] == 100.0  # classes without ground truth leave the mean
        assert result["num_gt"]["Car"] == {"easy": 50, "moderate": 50, "hard": 50}
        assert result["notes"] == []
        assert result["precision"]["3d"]["Car"]["moderate"] == [1.0] * 41


def test_few_ground_truths_cannot_reach_100():
    # The official sampling keeps one threshold per true positive and fills sample point i with threshold i: ten
    # perfectly detected cars fill points 0..9, so AP|R40 = 9/40 and AP|R11 = 3/11 (points 0, 4, 8).
    gts, dets = one_car_per_frame(10)
    assert ap(kitti_ap(gts, dets))["moderate"] == pytest.approx(22.5)
    assert ap(kitti_ap(gts, dets, recall_positions=11))["moderate"] == pytest.approx(300 / 11)
    notes = kitti_ap(gts, dets)["notes"]
    assert len(notes) == 3 and "caps AP|R40 at 22.5" in notes[1]
    assert max_reachable_ap(10) == 22.5 and max_reachable_ap(40) == 97.5 and max_reachable_ap(41) == 100.0
    assert max_reachable_ap(1, 11) == pytest.approx(100 / 11)


@pytest.mark.parametrize(("missed", "expected"), [(40, 50.0), (2, 97.5), (1, 100.0), (80, 0.0)])
def test_missed_objects_lower_recall(missed, expected):
    # 80 cars, the `missed` lowest-scored ones undetected. The thresholds' recalls step by 1/40 = 2/80 (every
    # second true positive): with 78 found, sample points 0..39 (recall up to 39/40) have precision 1, point 40
    # (recall 1) has none: AP|R40 = 39/40. With 40 found: points 0..20, AP = 20/40. With 79 found the devkit still
    # keeps the last score for point 40 (recall 79/80 counts as 1): AP 100.
    gts, dets = one_car_per_frame(80, detected=range(80 - missed))
    result = kitti_ap(gts, dets)
    for difficulty in ("easy", "moderate", "hard"):
        assert ap(result)[difficulty] == pytest.approx(expected, abs=1e-9)


def test_a_high_scoring_false_positive_lowers_precision_everywhere():
    # 80 cars found plus one false positive scoring above all: at the threshold of recall k/40 there are 2k true
    # positives and 1 false one; the precision 2k / (2k + 1) grows with k, so the monotone envelope is 80/81 at
    # every sample point.
    gts, dets = one_car_per_frame(80)
    far_away = obj(x=-10.0, z=45.0, bbox=(600.0, 100.0, 700.0, 160.0))
    result = kitti_ap(gts, add(dets, 0, [far_away], [0.99]), metrics=ALL_METRICS)
    for metric in ALL_METRICS:
        assert ap(result, metric)["moderate"] == pytest.approx(100 * 80 / 81)
    # below every true positive's score it is cut by every threshold
    assert ap(kitti_ap(gts, add(dets, 0, [far_away], [0.01])))["moderate"] == 100.0


def test_difficulty_levels_follow_occlusion_truncation_and_height():
    # 80 easy cars found, plus 80 undetected cars of one harder kind in the same frames: each counts (as a miss)
    # only at the difficulties that admit it, where recall drops to 1/2 (AP 50, as in the 40-of-80 case).
    gts, dets = one_car_per_frame(80)
    hard_kinds = {
        "occluded 1": (dict(occ=1), (100.0, 50.0, 50.0)),
        "occluded 2": (dict(occ=2), (100.0, 100.0, 50.0)),
        "occluded 3": (dict(occ=3), (100.0, 100.0, 100.0)),
        "truncated 0.2": (dict(trunc=0.2), (100.0, 50.0, 50.0)),
        "truncated 0.4": (dict(trunc=0.4), (100.0, 100.0, 50.0)),
        "truncated 0.6": (dict(trunc=0.6), (100.0, 100.0, 100.0)),
        "30 px tall": (dict(bbox=(300.0, 100.0, 360.0, 130.0)), (100.0, 50.0, 50.0)),
        "20 px tall": (dict(bbox=(300.0, 100.0, 360.0, 120.0)), (100.0, 100.0, 100.0)),
    }
    for kind, (fields, expected) in hard_kinds.items():
        hard_car = obj(x=8.0, z=30.0, **{"bbox": (600.0, 100.0, 700.0, 160.0), **fields})
        frames = gts
        for i in range(80):
            frames = add(frames, i, [hard_car])
        result = kitti_ap(frames, dets, metrics=ALL_METRICS)
        for metric in ALL_METRICS:
            assert tuple(ap(result, metric)[d] for d in ("easy", "moderate", "hard")) == pytest.approx(expected), kind
        # found, they never count as false positives where they are ignored
        found = dets
        for i in range(80):
            found = add(found, i, [hard_car], [0.95])
        assert kitti_ap(frames, found, metrics=ALL_METRICS)["map"] == {
            m: {"easy": 100.0, "moderate": 100.0, "hard": 100.0} for m in ALL_METRICS}, kind


def test_minimum_height_convention():
    # A car exactly 40 px tall counts at easy for the devkit (ignored below 40) but not for the Python port
    # (ignored at or below 40). Undetected: it lowers easy AP for the devkit only.
    gts, dets = one_car_per_frame(80)
    for i in range(80):
        gts = add(gts, i, [obj(x=8.0, z=30.0, bbox=(300.0, 100.0, 360.0, 140.0))])
    devkit = kitti_ap(gts, dets)
    port = kitti_ap(gts, dets, convention="openpcdet")
    assert devkit["num_gt"]["Car"]["easy"] == 160 and port["num_gt"]["Car"]["easy"] == 80
    assert ap(devkit)["easy"] == pytest.approx(50.0) and ap(port)["easy"] == 100.0
    assert ap(devkit)["moderate"] == ap(port)["moderate"] == pytest.approx(50.0)


def test_small_detections_are_ignored_not_false_positives():
    # 80 false positives scoring above every true positive, 30 px tall: shorter than easy's 40 px minimum, so
    # ignored there; counted at moderate, where precision at recall k/40 is 2k / (2k + 80), at most 1/2.
    gts, dets = one_car_per_frame(80)
    for i in range(80):
        dets = add(dets, i, [obj(x=-9.0, z=40.0, bbox=(700.0, 100.0, 760.0, 130.0))], [0.95])
    result = kitti_ap(gts, dets)
    assert ap(result)["easy"] == 100.0
    assert ap(result)["moderate"] == pytest.approx(50.0) and ap(result)["hard"] == pytest.approx(50.0)


def test_dontcare_regions_absorb_2d_false_positives_only():
    # 40 false positives inside DontCare regions, scoring above everything. In the image they fall in the
    # regions: not counted. DontCare regions have no 3D box: in BEV and 3D they are plain false positives,
    # 2k / (2k + 40) at most 2/3.
    gts, dets = one_car_per_frame(80)
    region = (600.0, 150.0, 700.0, 200.0)
    inside = obj(x=-9.0, z=40.0, bbox=(605.0, 152.0, 695.0, 198.0))
    for i in range(40):
        gts = add(gts, i, [dontcare(region)])
        dets = add(dets, i, [inside], [0.95])
    result = kitti_ap(gts, dets, metrics=ALL_METRICS)
    assert ap(result, "bbox")["moderate"] == 100.0 and ap(result, "aos")["moderate"] == 100.0
    assert ap(result, "bev")["moderate"] == pytest.approx(200 / 3) and ap(result, "3d")["moderate"] == pytest.approx(
        200 / 3)
    # half outside the region (overlap 0.5 of the detection's area < 0.7): a false positive in the image too
    straddling = obj(x=-9.0, z=40.0, bbox=(650.0, 150.0, 750.0, 200.0))
    dets_out = one_car_per_frame(80)[1]
    for i in range(40):
        dets_out = add(dets_out, i, [straddling], [0.95])
    assert ap(kitti_ap(gts, dets_out, metrics=("bbox",)), "bbox")["moderate"] == pytest.approx(200 / 3)


@pytest.mark.parametrize(("evaluated", "neighbour", "other"), [("Car", "Van", "Truck"),
                                                                ("Pedestrian", "Person_sitting", "Cyclist")])
def test_neighbouring_classes_are_ignored(evaluated, neighbour, other):
    # 80 objects found, plus 40 neighbours detected as the evaluated class with the top scores: the neighbours
    # absorb them (AP 100). The same with a class that is not a neighbour: 40 false positives, AP 2/3.
    gts, dets = one_car_per_frame(80, name=evaluated)
    for name, expected in ((neighbour, 100.0), (other, 200 / 3)):
        frames, found = gts, dets
        for i in range(40):
            beside = dict(x=8.0, z=30.0, bbox=(600.0, 100.0, 700.0, 160.0), dims=SIZES[name])
            frames = add(frames, i, [obj(name=name, **beside)])
            found = add(found, i, [obj(name=evaluated, **beside)], [0.95])
        result = kitti_ap(frames, found, classes=(evaluated,), metrics=ALL_METRICS)
        for metric in ALL_METRICS:
            assert result["ap"][metric][evaluated]["moderate"] == pytest.approx(expected), (name, metric)
    # detections of the neighbouring class are not detections of the evaluated one
    renamed = [objects([obj(name=neighbour)], [0.5]) for _ in range(80)]
    assert kitti_ap(gts, renamed, classes=(evaluated,))["ap"]["3d"][evaluated]["moderate"] == 0.0


def test_class_overlap_thresholds():
    # Detections slid 1 m along the length of a 4 x 2 box: BEV and 3D IoU = (4 - 1) / (4 + 1) = 0.6, image boxes
    # identical. 0.6 passes the pedestrian and cyclist threshold (0.5), not the car one (0.7).
    shape = dict(dims=(1.5, 2.0, 4.0), ry=0.0)
    moved = dict(x=1.0, **shape)
    gt_box, det_box = objects([obj(**shape)]).camera_boxes(), objects([obj(**moved)]).camera_boxes()
    assert bev_overlap(gt_box, det_box)[0, 0] == pytest.approx(0.6)
    assert box3d_overlap(gt_box, det_box)[0, 0] == pytest.approx(0.6)
    for name, expected in (("Car", 0.0), ("Pedestrian", 100.0), ("Cyclist", 100.0)):
        gts = [objects([obj(name=name, **shape)]) for _ in range(50)]
        dets = [objects([obj(name=name, **moved)], [0.5]) for _ in range(50)]
        result = kitti_ap(gts, dets, classes=(name,))
        assert result["ap"]["bbox"][name]["moderate"] == 100.0
        assert result["ap"]["bev"][name]["moderate"] == expected and result["ap"]["3d"][name]["moderate"] == expected
        if name == "Car":
            loose = kitti_ap(gts, dets, classes=(name,), min_overlaps={"Car": {"bbox": 0.7, "bev": 0.5, "3d": 0.5}})
            assert loose["ap"]["3d"]["Car"]["moderate"] == 100.0 and loose["min_overlaps"]["Car"]["bev"] == 0.5


def test_3d_overlap_needs_vertical_overlap():
    # the same footprint lifted by half its height: BEV IoU 1, 3D IoU (h/2) / (3h/2) = 1/3
    gts, _ = one_car_per_frame(50)
    dets = [objects([obj(y=1.6 - 0.75)], [0.5]) for _ in range(50)]
    assert box3d_overlap(gts[0].camera_boxes(), dets[0].camera_boxes())[0, 0] == pytest.approx(1 / 3)
    result = kitti_ap(gts, dets)
    assert ap(result, "bev")["moderate"] == 100.0 and ap(result, "3d")["moderate"] == 0.0


def test_aos_measures_orientation():
    # Every detection turned around (alpha + pi): matched, but orientation similarity (1 + cos pi) / 2 = 0.
    gts, _ = one_car_per_frame(50)
    flipped = [objects([obj(alpha=observation_angle(np.array([[0.0, 1.6, 20.0]]), np.array([0.3]))[0] + np.pi)],
                       [0.5]) for _ in range(50)]
    result = kitti_ap(gts, flipped, metrics=("bbox", "aos"))
    assert ap(result, "bbox")["moderate"] == 100.0 and ap(result, "aos")["moderate"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(SlidrError, match="alpha"):
        kitti_ap(gts, [objects([obj(alpha=-10.0)], [0.5]) for _ in range(50)], metrics=("aos",))


def test_precision_where_ignored_boxes_absorb_every_detection_is_zero():
    # Two vans (ignored for Car) and a car. Collecting scores, the first van takes the best-scoring detection D1
    # and the car takes D2 (a true positive at 0.5). At threshold 0.5 matching goes by overlap: the first van takes
    # D2, the second van D1, the car nothing: no true or false positive (the devkit divides 0 by 0; we count 0).
    gts = [objects([obj(name="Van", bbox=(0.0, 0.0, 100.0, 100.0)), obj(name="Van", bbox=(-20.0, 0.0, 80.0, 100.0)),
                    obj(name="Car", bbox=(5.0, 0.0, 105.0, 100.0))])]
    dets = [objects([obj(bbox=(0.0, 0.0, 90.0, 100.0)), obj(bbox=(0.0, 0.0, 100.0, 100.0))], [0.9, 0.5])]
    result = kitti_ap(gts, dets, classes=("Car",), metrics=("bbox",), recall_positions=11)
    assert result["precision"]["bbox"]["Car"]["moderate"] == [0.0] * 41
    assert ap(result, "bbox")["moderate"] == 0.0
    assert reference.evaluate([format_kitti_objects(g) for g in gts], [format_kitti_objects(d) for d in dets],
                              classes=("Car",), metrics=("bbox",))[11]["bbox"]["Car"]["moderate"] == 0.0


def test_frames_without_objects():
    empty, no_detections = KittiObjects.empty(), KittiObjects.empty(with_score=True)
    result = kitti_ap([empty, empty], [no_detections, parse_kitti_objects("")])
    assert result["map_moderate"] == {"bbox": None, "bev": None, "3d": None}
    gts, _ = one_car_per_frame(50)
    assert ap(kitti_ap(gts, [no_detections] * 50))["moderate"] == 0.0


def test_score_thresholds_follow_the_recall_grid():
    # 80 ground truths, 80 true positives: every second score after the first two (recall k/40)
    scores = np.linspace(1.0, 0.2, 80)
    kept = score_thresholds(scores, 80)
    assert len(kept) == 41 and kept[0] == 1.0 and kept[-1] == scores[-1]
    np.testing.assert_allclose(kept[1:], scores[1::2])
    assert len(score_thresholds(np.array([0.5]), 1)) == 1 and len(score_thresholds(np.zeros(0), 3)) == 0


# --- overlaps ---------------------------------------------------------------------------------------------------
def random_box_pairs(rng, count):
    a = np.column_stack([rng.uniform(-3, 3, count), rng.uniform(0, 2, count), rng.uniform(-3, 3, count),
                         rng.uniform(0.3, 5, (count, 3)), rng.uniform(-np.pi, np.pi, count)])
    b = a + np.column_stack([rng.normal(0, 1.0, (count, 3)), rng.normal(0, 0.5, (count, 3)),
                             rng.normal(0, 1.0, count)])
    b[:, 3:6] = np.abs(b[:, 3:6]) + 0.1
    b[: count // 10] = a[: count // 10]                                           # identical
    b[count // 10: count // 5, 3:6] = a[count // 10: count // 5, 3:6] * 0.5       # nested, same centre and yaw
    b[count // 10: count // 5, :3] = a[count // 10: count // 5, :3]
    b[count // 10: count // 5, 6] = a[count // 10: count // 5, 6]
    b[count // 5: count // 4, 6] = a[count // 5: count // 4, 6] + np.pi / 2     # a quarter turn
    return a, b


def test_bev_overlap_matches_shapely():
    rng = np.random.default_rng(3)
    a, b = random_box_pairs(rng, 400)
    ours = np.array([bev_overlap(a[i: i + 1], b[i: i + 1])[0, 0] for i in range(len(a))])
    theirs = []
    for i in range(len(a)):
        pa = reference.to_polygon(reference.Groundtruth(None, 0, 0, a[i, 4], a[i, 5], a[i, 3], a[i, 0], a[i, 1],
                                                        a[i, 2], a[i, 6]))
        pb = reference.to_polygon(reference.Groundtruth(None, 0, 0, b[i, 4], b[i, 5], b[i, 3], b[i, 0], b[i, 1],
                                                        b[i, 2], b[i, 6]))
        inter = pa.intersection(pb).area
        theirs.append(inter / (pa.area + pb.area - inter))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert np.sum(np.array(theirs) > 0.05) > 150  # most pairs overlap: the comparison is not about zeros
    np.testing.assert_allclose(ours[:40], 1.0, atol=1e-12)
    # all pairs at once equal the pairs one by one, and the overlap is symmetric
    full = bev_overlap(a[:50], b[:50])
    np.testing.assert_allclose(np.diag(full), ours[:50], atol=1e-15)
    np.testing.assert_allclose(full, bev_overlap(b[:50], a[:50]).T, atol=1e-12)


def test_3d_overlap_matches_monte_carlo_volumes():
    # Sample points uniformly in box a (written out here: length along (cos ry, -sin ry) in (x, z), the box from
    # y - h to y) and count those inside box b.
    rng = np.random.default_rng(4)
    a, b = random_box_pairs(rng, 60)
    b[:, 1] = a[:, 1] + rng.uniform(-1, 1, len(a))
    checked = 0
    for i in range(len(a)):
        ours = box3d_overlap(a[i: i + 1], b[i: i + 1])[0, 0]
        if not 0.05 < ours < 0.95:
            continue
        n = 200_000
        u = rng.uniform(-0.5, 0.5, n) * a[i, 3]
        v = rng.uniform(-0.5, 0.5, n) * a[i, 5]
        s = rng.uniform(0, 1, n) * a[i, 4]
        c, sn = math.cos(a[i, 6]), math.sin(a[i, 6])
        x, y, z = a[i, 0] + c * u + sn * v, a[i, 1] - s, a[i, 2] - sn * u + c * v
        c, sn = math.cos(b[i, 6]), math.sin(b[i, 6])
        dx, dz = x - b[i, 0], z - b[i, 2]
        along, across = c * dx - sn * dz, sn * dx + c * dz
        inside = ((np.abs(along) <= b[i, 3] / 2) & (np.abs(across) <= b[i, 5] / 2)
                  & (y <= b[i, 1]) & (y >= b[i, 1] - b[i, 4]))
        volume_a, volume_b = np.prod(a[i, 3:6]), np.prod(b[i, 3:6])
        inter = inside.mean() * volume_a
        sigma = math.sqrt(inside.mean() * (1 - inside.mean()) / n) * volume_a
        estimate = inter / (volume_a + volume_b - inter)
        assert abs(estimate - ours) < 5 * sigma / (volume_a + volume_b - inter) * 2 + 1e-4, i
        checked += 1
    assert checked >= 10


def test_overlap_conventions():
    # image boxes: no +1 pixel, touching boxes do not overlap, criterion "a" divides by the first box's area
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert image_box_overlap(boxes, np.array([[5.0, 0.0, 15.0, 10.0]]))[0, 0] == pytest.approx(1 / 3)
    assert image_box_overlap(boxes, np.array([[5.0, 0.0, 15.0, 10.0]]), "a")[0, 0] == pytest.approx(0.5)
    assert image_box_overlap(boxes, np.array([[10.0, 0.0, 20.0, 10.0]]))[0, 0] == 0.0
    # rotation_y: at 0 the length runs along x, at -pi/2 along z (the car drives away from the camera)
    along_x = bev_corners(np.array([[0.0, 0.0, 0.0, 4.0, 1.5, 2.0, 0.0]]))[0]
    along_z = bev_corners(np.array([[0.0, 0.0, 0.0, 4.0, 1.5, 2.0, -np.pi / 2]]))[0]
    assert np.ptp(along_x[:, 0]) == pytest.approx(4) and np.ptp(along_x[:, 1]) == pytest.approx(2)
    assert np.ptp(along_z[:, 0]) == pytest.approx(2) and np.ptp(along_z[:, 1]) == pytest.approx(4)
    # the sign of ry matters for a box off the axes: the devkit's rotation [[cos, sin], [-sin, cos]]
    turned = np.array([[0.0, 0.0, 0.0, 4.0, 1.5, 1.0, 0.5]])
    corners = {tuple(np.round(c, 9)) for c in bev_corners(turned)[0]}
    devkit = {tuple(np.round(c, 9)) for c in reference.to_polygon(reference.Groundtruth(
        None, 0, 0, 1.5, 1.0, 4.0, 0.0, 0.0, 0.0, 0.5)).exterior.coords[:4]}
    assert corners == devkit
    mirrored = turned * np.array([1, 1, 1, 1, 1, 1, -1])
    assert bev_overlap(turned, mirrored)[0, 0] < 0.6
    # a box spans y - h .. y (y is its bottom, camera y points down); were y its centre, the first pair would
    # overlap over 1.5 .. 2.5 only (IoU 1/5) and the second over 1 .. 2 (IoU 1/2)
    tall = np.array([[0.0, 2.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    short_on_top = np.array([[0.0, 1.0, 0.0, 4.0, 1.0, 2.0, 0.0]])  # spans 0..1 inside tall's 0..2
    short_above = np.array([[0.0, 0.5, 0.0, 4.0, 1.0, 2.0, 0.0]])   # spans -0.5..0.5: half inside
    assert box3d_overlap(tall, short_on_top)[0, 0] == pytest.approx(0.5)
    assert box3d_overlap(tall, short_above)[0, 0] == pytest.approx(0.5 / 2.5)
    # degenerate boxes (DontCare's -1 sizes) overlap nothing
    assert bev_overlap(tall, np.array([[0.0, 2.0, 0.0, -1.0, -1.0, -1.0, -10.0]]))[0, 0] == 0.0


# --- agreement with the transcription of the devkit -----------------------------------------------------------
def random_scene(seed: int, frames: int) -> tuple[list[KittiObjects], list[KittiObjects]]:
    """Random frames exercising every rule: all KITTI types, DontCare regions with detections inside, neighbours
    overlapping each other, heights around (and exactly at) the minima, every occlusion and truncation level;
    detections as noisy copies (some turned around, some renamed, some duplicated), stray false positives, and
    scores with two decimals (ties)."""
    rng = np.random.default_rng(seed)
    gt_frames, det_frames = [], []
    for _ in range(frames):
        g, d = [], []
        for _ in range(rng.integers(2, 10)):
            name = str(rng.choice(["Car"] * 4 + ["Pedestrian", "Cyclist"] * 2
                                  + ["Van", "Person_sitting", "Truck", "DontCare"]))
            left, top = rng.uniform(0, 1100), rng.uniform(80, 250)
            height = rng.choice([rng.uniform(12, 120), 25.0, 40.0], p=[0.9, 0.05, 0.05])
            bbox = (left, top, left + rng.uniform(8, 200), top + height)
            if name == "DontCare":
                g.append(dontcare(bbox))
                if rng.random() < 0.7:
                    inner = (bbox[0] + 1, bbox[1] + 1, bbox[2] - rng.uniform(0, 3), bbox[3] - rng.uniform(0, 3))
                    d.append(obj(name=str(rng.choice(["Car", "Pedestrian", "Cyclist"])), bbox=inner,
                                 x=rng.uniform(-10, 10), z=rng.uniform(5, 40), ry=rng.uniform(-np.pi, np.pi)))
                continue
            h, w, length = np.array(SIZES[name]) * rng.uniform(0.85, 1.15, 3)
            x, y, z, ry = rng.uniform(-12, 12), rng.normal(1.65, 0.2), rng.uniform(4, 45), rng.uniform(-np.pi, np.pi)
            truth = obj(name=name, x=x, y=y, z=z, ry=ry, bbox=bbox, dims=(h, w, length),
                        trunc=float(rng.choice([0, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.8],
                                               p=[.5, .1, .1, .1, .05, .05, .05, .05])),
                        occ=int(rng.choice(4, p=[.5, .25, .15, .1])))
            g.append(truth)
            if rng.random() < 0.15:  # a neighbour right beside it
                shifted = tuple(b + rng.normal(0, 3) for b in bbox)
                g.append(dict(truth, name=str(rng.choice(["Van", "Car", "Person_sitting", "Pedestrian"])),
                              loc=(x + rng.normal(0, 0.3), y, z + rng.normal(0, 0.3)),
                              bbox=(shifted[0], shifted[1], max(shifted[2], shifted[0] + 1),
                                    max(shifted[3], shifted[1] + 1))))
            for _ in range(rng.choice(3, p=[0.2, 0.6, 0.2])):
                spread = np.mean([length, w]) * rng.choice([0.1, 0.25, 0.5, 1.0])
                noisy = tuple(b + rng.normal(0, rng.choice([0.02, 0.06, 0.1]) * height) for b in bbox)
                d.append(obj(name=name if rng.random() < 0.85 else str(rng.choice(["Car", "Pedestrian", "Cyclist"])),
                             x=x + rng.normal(0, 0.12 * spread), y=y + rng.normal(0, 0.1),
                             z=z + rng.normal(0, 0.12 * spread), ry=ry + rng.choice([rng.normal(0, 0.15), np.pi]),
                             bbox=(noisy[0], noisy[1], max(noisy[2], noisy[0] + 1), max(noisy[3], noisy[1] + 1)),
                             dims=tuple(np.array((h, w, length)) * rng.uniform(0.9, 1.1, 3))))
        for _ in range(rng.integers(0, 3)):
            left, top = rng.uniform(0, 1100), rng.uniform(80, 250)
            d.append(obj(name=str(rng.choice(["Car", "Pedestrian", "Cyclist"])), x=rng.uniform(-12, 12),
                         z=rng.uniform(4, 45), ry=rng.uniform(-np.pi, np.pi),
                         bbox=(left, top, left + rng.uniform(10, 150), top + rng.uniform(15, 90))))
        gt_frames.append(objects(g))
        det_frames.append(objects(d, np.round(rng.uniform(0.05, 1.0, len(d)), 2)))
    return gt_frames, det_frames


def assert_agrees_with_reference(seed, frames, metrics, conventions=("devkit",)):
    gt_frames, det_frames = random_scene(seed, frames)
    gt_texts = [format_kitti_objects(g) for g in gt_frames]
    det_texts = [format_kitti_objects(d) for d in det_frames]
    # both read the same label text: ours through the parser, the reference with its own reader
    gts = [parse_kitti_objects(t, scores=False) for t in gt_texts]
    dets = [parse_kitti_objects(t, scores=True) for t in det_texts]
    compared = 0
    for convention in conventions:
        expected = reference.evaluate(gt_texts, det_texts, metrics=metrics, convention=convention)
        for positions in (40, 11):
            result = kitti_ap(gts, dets, metrics=metrics, recall_positions=positions, convention=convention)
            for metric in metrics:
                for name in ("Car", "Pedestrian", "Cyclist"):
                    for difficulty in ("easy", "moderate", "hard"):
                        want = expected[positions][metric][name][difficulty]
                        got = result["ap"][metric][name][difficulty]
                        where = (seed, convention, positions, metric, name, difficulty)
                        assert (want is None) == (got is None), where
                        if want is not None:
                            assert got == pytest.approx(want, abs=1e-6), where
                            compared += 0 < want < 100
    return compared


def test_agrees_with_devkit_transcription_on_random_scenes():
    # ~500 boxes over 30 frames; all four metrics, both recall samplings
    assert assert_agrees_with_reference(seed=0, frames=30, metrics=ALL_METRICS) >= 40
    # the Python port's height rule (differs on the boxes exactly 25 or 40 px tall)
    assert assert_agrees_with_reference(seed=1, frames=30, metrics=("bbox",), conventions=("openpcdet",)) >= 6


@pytest.mark.slow
def test_agrees_with_devkit_transcription_on_a_larger_scene():
    assert assert_agrees_with_reference(2, frames=60, metrics=ALL_METRICS, conventions=("devkit", "openpcdet")) >= 100


# --- label files ------------------------------------------------------------------------------------------------
def test_label_text_round_trip(tmp_path):
    gt_frames, det_frames = random_scene(5, 3)
    for frame in gt_frames + det_frames:
        back = parse_kitti_objects(format_kitti_objects(frame, decimals=6))
        assert list(back.names) == list(frame.names)
        for name in ("truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y"):
            np.testing.assert_allclose(getattr(back, name), getattr(frame, name), atol=5e-7)
        if len(frame):  # an empty text cannot tell whether it held detections
            assert (back.score is None) == (frame.score is None)
    write_kitti_objects(tmp_path / "000007.txt", det_frames[0])
    (tmp_path / "000008.txt").write_text("")
    folder = read_kitti_folder(tmp_path, ["000007", "000008"], scores=True)
    assert len(folder["000007"]) == len(det_frames[0]) and len(folder["000008"]) == 0
    assert folder["000008"].score is not None
    with pytest.raises(DataError, match="000009.txt"):
        read_kitti_folder(tmp_path, ["000007", "000009"])


def test_bad_label_text_is_reported_with_its_line():
    good = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59"
    with pytest.raises(DataError, match=r"f.txt line 2: 14 fields"):
        parse_kitti_objects(good + "\n" + " ".join(good.split()[:14]), source="f.txt")
    with pytest.raises(DataError, match="must be numbers"):
        parse_kitti_objects(good.replace("46.70", "far"), source="f.txt")
    with pytest.raises(DataError, match="expected 15"):
        parse_kitti_objects(good + "\n" + good + " 0.9", source="f.txt")
    with pytest.raises(DataError, match="expected 16"):
        parse_kitti_objects(good, scores=True)
    with pytest.raises(DataError, match="right < left"):
        parse_kitti_objects(good.replace("614.12", "500.00"))
    assert len(parse_kitti_objects("\n\n")) == 0


def test_bad_evaluation_input_is_refused():
    gts, dets = one_car_per_frame(3)
    with pytest.raises(SlidrError, match="3 ground-truth frames but 2"):
        kitti_ap(gts, dets[:2])
    with pytest.raises(SlidrError, match="no scores"):
        kitti_ap(gts, gts)
    with pytest.raises(ConfigError, match="metrics"):
        kitti_ap(gts, dets, metrics=("iou",))
    with pytest.raises(ConfigError, match="recall_positions"):
        kitti_ap(gts, dets, recall_positions=20)
    with pytest.raises(ConfigError, match="convention"):
        kitti_ap(gts, dets, convention="mine")
    with pytest.raises(ConfigError, match="Tram"):
        kitti_ap(gts, dets, classes=("Tram",))
    assert kitti_ap(gts, dets, classes=("Tram",), min_overlaps={"Tram": 0.7})["ap"]["3d"]["Tram"]["easy"] is None
    flat = [objects([obj(bbox=(100.0, 100.0, 200.0, 100.0))], [0.5]) for _ in range(3)]
    with pytest.raises(SlidrError, match="2D box"):
        kitti_ap(gts, flat)


# --- real KITTI frames ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kitti_training(realdata):
    path = realdata / "kitti_object_vis" / "data" / "object" / "training"
    if not (path / "label_2").is_dir():
        pytest.skip(f"{path} has no label_2")
    return path


def read_calibration(path):
    values = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, numbers = line.split(":", 1)
            values[key] = np.array(numbers.split(), dtype=float)
    rectify, velo_to_cam = np.eye(4), np.eye(4)
    rectify[:3, :3] = values["R0_rect"].reshape(3, 3)
    velo_to_cam[:3] = values["Tr_velo_to_cam"].reshape(3, 4)
    return values["P2"].reshape(3, 4), rectify @ velo_to_cam


def test_real_labels_evaluated_against_themselves(kitti_training):
    labels = read_kitti_folder(kitti_training / "label_2")
    assert {k: len(v) for k, v in labels.items()} == {"000000": 1, "000001": 7, "000002": 2}
    assert list(labels["000001"].names).count("DontCare") == 4
    frames = list(labels.values())
    dets = [KittiObjects(names=f.names, truncated=f.truncated, occluded=f.occluded, alpha=f.alpha, bbox=f.bbox,
                         dimensions=f.dimensions, location=f.location, rotation_y=f.rotation_y,
                         score=np.linspace(1, 0.5, len(f))) for f in frames]
    result = kitti_ap(frames, dets, metrics=ALL_METRICS, recall_positions=11)
    for metric in ALL_METRICS:
        for name in ("Car", "Pedestrian", "Cyclist"):
            for difficulty, value in result["ap"][metric][name].items():
                count = result["num_gt"][name][difficulty]
                assert value == (None if count == 0 else pytest.approx(max_reachable_ap(count, 11))), (metric, name)
    # the car of 000001 is 21.6 px tall (ignored), the cyclist fully occluded (level 3)
    assert result["num_gt"]["Car"] == {"easy": 0, "moderate": 1, "hard": 1}
    assert result["num_gt"]["Pedestrian"]["easy"] == 1 and result["num_gt"]["Cyclist"]["hard"] == 0
    assert "Pedestrian" in format_ap_table(result, "3d")


def test_real_boxes_through_the_lidar_and_the_image(kitti_training):
    labels = read_kitti_objects(kitti_training / "label_2" / "000000.txt")
    projection, lidar_to_camera = read_calibration(kitti_training / "calib" / "000000.txt")
    boxes = labels.camera_boxes()
    # the labelled 2D box of the (untruncated, unoccluded) pedestrian is close to its projected 3D box
    projected = project_boxes_to_image(boxes, projection, image_size=(1242, 375))
    assert image_box_overlap(projected, labels.bbox)[0, 0] > 0.85
    # in the lidar frame the box holds the pedestrian's points; moved 2 m sideways it holds almost none
    lidar = camera_to_lidar_boxes(boxes, lidar_to_camera)
    points = np.fromfile(kitti_training / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)[:, :3]

    def inside(box):
        relative = points - box[:3]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        along, across = relative[:, 0] * cos + relative[:, 1] * sin, -relative[:, 0] * sin + relative[:, 1] * cos
        return int(np.sum((np.abs(along) <= box[3] / 2) & (np.abs(across) <= box[4] / 2)
                          & (np.abs(relative[:, 2]) <= box[5] / 2)))

    assert inside(lidar[0]) > 200
    assert inside(lidar[0] + np.array([0, 2.0, 0, 0, 0, 0, 0])) < 20
    # the round trip is exact, and KITTI's axes give ry = -yaw - pi/2 up to the calibration's small rotation
    np.testing.assert_allclose(lidar_to_camera_boxes(lidar, lidar_to_camera), boxes, atol=1e-9)
    assert abs(labels.rotation_y[0] - (-lidar[0, 6] - np.pi / 2)) < 0.01
    rng = np.random.default_rng(6)
    random = np.column_stack([rng.uniform(-30, 30, (50, 3)), rng.uniform(0.3, 5, (50, 3)), rng.uniform(-3, 3, 50)])
    back = camera_to_lidar_boxes(lidar_to_camera_boxes(random, lidar_to_camera), lidar_to_camera)
    difference = back - random
    difference[:, 6] = (difference[:, 6] + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(difference).max() < 1e-9


def test_exact_axis_permutation_gives_the_textbook_yaw():
    # lidar x forward, y left, z up -> camera x right (-y), y down (-z), z forward (x)
    permutation = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    box = np.array([[10.0, 2.0, -0.8, 4.0, 1.8, 1.5, 0.4]])
    camera = lidar_to_camera_boxes(box, permutation)
    np.testing.assert_allclose(camera[0], [-2.0, 0.8 + 0.75, 10.0, 4.0, 1.5, 1.8, -0.4 - np.pi / 2])
