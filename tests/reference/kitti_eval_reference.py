"""TEST REFERENCE ONLY: a plain transcription of the KITTI devkit's object evaluation (``evaluate_object.cpp``, the
version with 41 sample points and AP|R40), used by ``tests/test_detection_eval.py`` to check
:mod:`slidr.methods.detection_eval`.

Written to be read side by side with the devkit: the same structures (ground truth / detection records read
field by field from the label text), the same functions (``clean_data``, ``compute_statistics``,
``get_thresholds``, ``eval_class``) and the same loops, in the same order, with no vectorisation. Overlaps:
``image_box_overlap`` as the devkit writes it; BEV and 3D through shapely polygons built with the devkit's
corner formula (``toPolygon``), instead of boost::geometry.

Two switches beyond the devkit, both documented in slidr's module:
- ``convention="openpcdet"`` ignores ground truths whose height is *at or below* the minimum (the Python port);
  the devkit ignores those *below* it.
- precision where nothing is counted (tp + fp = 0) is 0 here; the devkit divides 0 by 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shapely.geometry import Polygon

N_SAMPLE_PTS = 41
MIN_HEIGHT = [40, 25, 25]
MAX_OCCLUSION = [0, 1, 2]
MAX_TRUNCATION = [0.15, 0.3, 0.5]
MIN_OVERLAP = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}  # the same for image, ground and 3D
METRIC_INDEX = {"bbox": 0, "aos": 0, "bev": 1, "3d": 2}


@dataclass
class Box:
    type: str
    x1: float
    y1: float
    x2: float
    y2: float
    alpha: float


@dataclass
class Groundtruth:
    box: Box
    truncation: float
    occlusion: int
    h: float
    w: float
    l: float  # noqa: E741 (the devkit's names)
    t1: float
    t2: float
    t3: float
    ry: float


@dataclass
class Detection:
    box: Box
    h: float
    w: float
    l: float  # noqa: E741
    t1: float
    t2: float
    t3: float
    ry: float
    thresh: float


def load_groundtruth(text: str) -> list[Groundtruth]:
    result = []
    for line in text.splitlines():
        f = line.split()
        if len(f) != 15:
            continue
        v = [float(x) for x in f[1:]]
        result.append(Groundtruth(Box(f[0], v[3], v[4], v[5], v[6], v[2]), v[0], int(v[1]),
                                  v[7], v[8], v[9], v[10], v[11], v[12], v[13]))
    return result


def load_detections(text: str) -> list[Detection]:
    result = []
    for line in text.splitlines():
        f = line.split()
        if len(f) != 16:
            continue
        v = [float(x) for x in f[1:]]
        result.append(Detection(Box(f[0], v[3], v[4], v[5], v[6], v[2]),
                                v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]))
    return result


# --- overlaps -------------------------------------------------------------------------------------------------
def image_box_overlap(a: Box, b: Box, criterion: int = -1) -> float:
    x1 = max(a.x1, b.x1)
    y1 = max(a.y1, b.y1)
    x2 = min(a.x2, b.x2)
    y2 = min(a.y2, b.y2)
    w = x2 - x1
    h = y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    a_area = (a.x2 - a.x1) * (a.y2 - a.y1)
    b_area = (b.x2 - b.x1) * (b.y2 - b.y1)
    if criterion == -1:
        return inter / (a_area + b_area - inter)
    if criterion == 0:
        return inter / a_area
    return inter / b_area


def to_polygon(g) -> Polygon:
    """The devkit's toPolygon: corners (l/2, w/2), (l/2, -w/2), (-l/2, -w/2), (-l/2, w/2) rotated by
    [[cos ry, sin ry], [-sin ry, cos ry]] and moved to (t1, t3)."""
    c, s = math.cos(g.ry), math.sin(g.ry)
    corners_l = [g.l / 2, g.l / 2, -g.l / 2, -g.l / 2]
    corners_w = [g.w / 2, -g.w / 2, -g.w / 2, g.w / 2]
    points = []
    for i in range(4):
        x = c * corners_l[i] + s * corners_w[i] + g.t1
        z = -s * corners_l[i] + c * corners_w[i] + g.t3
        points.append((x, z))
    return Polygon(points)


def ground_box_overlap(d, g, criterion: int = -1) -> float:
    dp, gp = to_polygon(d), to_polygon(g)
    inter = dp.intersection(gp).area
    if criterion == -1:
        union = dp.union(gp).area
        return inter / union if union > 0 else 0.0
    if criterion == 0:
        return inter / dp.area if dp.area > 0 else 0.0
    return inter / gp.area if gp.area > 0 else 0.0


def box3d_overlap(d, g, criterion: int = -1) -> float:
    dp, gp = to_polygon(d), to_polygon(g)
    inter_area = dp.intersection(gp).area
    ymax = min(d.t2, g.t2)
    ymin = max(d.t2 - d.h, g.t2 - g.h)
    inter_vol = inter_area * max(0.0, ymax - ymin)
    det_vol = d.h * d.l * d.w
    gt_vol = g.h * g.l * g.w
    if criterion == -1:
        return inter_vol / (det_vol + gt_vol - inter_vol)
    if criterion == 0:
        return inter_vol / det_vol
    return inter_vol / gt_vol


def box_overlap(metric: int, d, g, criterion: int = -1) -> float:
    if metric == 0:
        return image_box_overlap(d.box, g.box, criterion)
    if metric == 1:
        return ground_box_overlap(d, g, criterion)
    return box3d_overlap(d, g, criterion)


# --- the evaluation -------------------------------------------------------------------------------------------
def clean_data(current_class: str, gt, det, difficulty: int, convention: str):
    ignored_gt, dc, ignored_det = [], [], []
    n_gt = 0
    for i in range(len(gt)):
        height = gt[i].box.y2 - gt[i].box.y1
        if gt[i].box.type.lower() == current_class:
            valid_class = 1
        elif current_class == "pedestrian" and gt[i].box.type.lower() == "person_sitting":
            valid_class = 0
        elif current_class == "car" and gt[i].box.type.lower() == "van":
            valid_class = 0
        else:
            valid_class = -1
        too_small = height <= MIN_HEIGHT[difficulty] if convention == "openpcdet" else height < MIN_HEIGHT[difficulty]
        ignore = False
        if gt[i].occlusion > MAX_OCCLUSION[difficulty] or gt[i].truncation > MAX_TRUNCATION[difficulty] or too_small:
            ignore = True
        if valid_class == 1 and not ignore:
            ignored_gt.append(0)
            n_gt += 1
        elif valid_class == 0 or (ignore and valid_class == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
    for i in range(len(gt)):
        if gt[i].box.type.lower() == "dontcare":
            dc.append(gt[i])
    for i in range(len(det)):
        if det[i].box.type.lower() == current_class:
            valid_class = 1
        else:
            valid_class = -1
        height = int(abs(det[i].box.y1 - det[i].box.y2))  # int32_t height = fabs(...)
        if height < MIN_HEIGHT[difficulty]:
            ignored_det.append(1)
        elif valid_class == 1:
            ignored_det.append(0)
        else:
            ignored_det.append(-1)
    return ignored_gt, dc, ignored_det, n_gt


def compute_statistics(gt, det, dc, ignored_gt, ignored_det, compute_fp, overlaps, dc_overlap, min_overlap,
                       compute_aos=False, thresh=0.0):
    """``overlaps[j][i]`` = boxoverlap(det[j], gt[i], -1); ``dc_overlap(j, k)`` = boxoverlap(det[j], dc[k], 0)."""
    tp = fp = fn = 0
    similarity = 0.0
    v = []
    NO_DETECTION = -10000000
    delta = []
    assigned_detection = [False] * len(det)
    ignored_threshold = [False] * len(det)
    if compute_fp:
        for i in range(len(det)):
            if det[i].thresh < thresh:
                ignored_threshold[i] = True
    for i in range(len(gt)):
        if ignored_gt[i] == -1:
            continue
        det_idx = -1
        valid_detection = NO_DETECTION
        max_overlap = 0.0
        assigned_ignored_det = False
        for j in range(len(det)):
            if ignored_det[j] == -1:
                continue
            if assigned_detection[j]:
                continue
            if ignored_threshold[j]:
                continue
            overlap = overlaps[j][i]
            if not compute_fp and overlap > min_overlap and det[j].thresh > valid_detection:
                det_idx = j
                valid_detection = det[j].thresh
            elif (compute_fp and overlap > min_overlap and (overlap > max_overlap or assigned_ignored_det)
                  and ignored_det[j] == 0):
                max_overlap = overlap
                det_idx = j
                valid_detection = 1
                assigned_ignored_det = False
            elif compute_fp and overlap > min_overlap and valid_detection == NO_DETECTION and ignored_det[j] == 1:
                det_idx = j
                valid_detection = 1
                assigned_ignored_det = True
        if valid_detection == NO_DETECTION and ignored_gt[i] == 0:
            fn += 1
        elif valid_detection != NO_DETECTION and (ignored_gt[i] == 1 or ignored_det[det_idx] == 1):
            assigned_detection[det_idx] = True
        elif valid_detection != NO_DETECTION:
            tp += 1
            v.append(det[det_idx].thresh)
            if compute_aos:
                delta.append(gt[i].box.alpha - det[det_idx].box.alpha)
            assigned_detection[det_idx] = True
    if compute_fp:
        for i in range(len(det)):
            if not (assigned_detection[i] or ignored_det[i] == -1 or ignored_det[i] == 1 or ignored_threshold[i]):
                fp += 1
        nstuff = 0
        for i in range(len(dc)):
            for j in range(len(det)):
                if assigned_detection[j]:
                    continue
                if ignored_det[j] == -1 or ignored_det[j] == 1:
                    continue
                if ignored_threshold[j]:
                    continue
                if dc_overlap(j, i) > min_overlap:
                    assigned_detection[j] = True
                    nstuff += 1
        fp -= nstuff
        if compute_aos:
            tmp = [0.0] * fp
            for i in range(len(delta)):
                tmp.append((1.0 + math.cos(delta[i])) / 2.0)
            if tp > 0 or fp > 0:
                similarity = sum(tmp)
            else:
                similarity = -1
    return {"tp": tp, "fp": fp, "fn": fn, "similarity": similarity, "v": v}


def get_thresholds(v: list[float], n_groundtruth: int) -> list[float]:
    t = []
    v = sorted(v, reverse=True)
    current_recall = 0.0
    for i in range(len(v)):
        l_recall = (i + 1) / n_groundtruth
        if i < len(v) - 1:
            r_recall = (i + 2) / n_groundtruth
        else:
            r_recall = l_recall
        if (r_recall - current_recall) < (current_recall - l_recall) and i < len(v) - 1:
            continue
        t.append(v[i])
        current_recall += 1.0 / (N_SAMPLE_PTS - 1.0)
    return t


def eval_class(current_class: str, groundtruth, detections, metric: int, difficulty: int, compute_aos: bool,
               convention: str):
    """The devkit's eval_class: returns (precision, aos) over the 41 sample points and the ground-truth count."""
    n_gt = 0
    v = []
    ignored_gt, ignored_det, dontcare, overlaps, dc_overlaps = [], [], [], [], []
    min_overlap = MIN_OVERLAP[current_class]
    for i in range(len(groundtruth)):
        gt, det = groundtruth[i], detections[i]
        i_gt, dc, i_det, n = clean_data(current_class, gt, det, difficulty, convention)
        n_gt += n
        ignored_gt.append(i_gt)
        ignored_det.append(i_det)
        dontcare.append(dc)
        # the devkit evaluates boxoverlap inside the loops; the values do not change, so they are computed once
        overlaps.append([[box_overlap(metric, d, g) for g in gt] for d in det])

        def dc_overlap(j, k, det=det, dc=dc):
            return box_overlap(metric, det[j], dc[k], 0)

        dc_overlaps.append(dc_overlap)
        stat = compute_statistics(gt, det, dc, i_gt, i_det, False, overlaps[i], dc_overlap, min_overlap)
        v.extend(stat["v"])
    thresholds = get_thresholds(v, n_gt) if n_gt > 0 else []
    pr = [{"tp": 0, "fp": 0, "fn": 0, "similarity": 0.0} for _ in thresholds]
    for i in range(len(groundtruth)):
        for t in range(len(thresholds)):
            stat = compute_statistics(groundtruth[i], detections[i], dontcare[i], ignored_gt[i], ignored_det[i], True,
                                      overlaps[i], dc_overlaps[i], min_overlap, compute_aos, thresholds[t])
            pr[t]["tp"] += stat["tp"]
            pr[t]["fp"] += stat["fp"]
            pr[t]["fn"] += stat["fn"]
            if stat["similarity"] != -1:
                pr[t]["similarity"] += stat["similarity"]
    precision = [0.0] * N_SAMPLE_PTS
    aos = [0.0] * N_SAMPLE_PTS
    for i in range(len(thresholds)):
        detected = pr[i]["tp"] + pr[i]["fp"]
        precision[i] = pr[i]["tp"] / detected if detected > 0 else 0.0
        aos[i] = pr[i]["similarity"] / detected if detected > 0 else 0.0
    for i in range(len(thresholds)):
        precision[i] = max(precision[i:])
        aos[i] = max(aos[i:])
    return precision, aos, n_gt


def evaluate(gt_texts: list[str], det_texts: list[str], classes=("Car", "Pedestrian", "Cyclist"),
             metrics=("bbox", "bev", "3d"), convention: str = "devkit") -> dict:
    """AP in percent for both samplings: ``{40 | 11: {metric: {class: {difficulty: AP or None}}}}`` (None: no
    counted ground truth)."""
    groundtruth = [load_groundtruth(t) for t in gt_texts]
    detections = [load_detections(t) for t in det_texts]
    result: dict = {40: {}, 11: {}}
    for metric in metrics:
        for recall_positions in (40, 11):
            result[recall_positions][metric] = {name: {} for name in classes}
        for name in classes:
            for difficulty, level in enumerate(("easy", "moderate", "hard")):
                precision, aos, n_gt = eval_class(name.lower(), groundtruth, detections, METRIC_INDEX[metric],
                                                  difficulty, metric == "aos", convention)
                values = aos if metric == "aos" else precision
                r40 = sum(values[i] for i in range(1, N_SAMPLE_PTS)) / 40 * 100
                r11 = sum(values[i] for i in range(0, N_SAMPLE_PTS, 4)) / 11 * 100
                result[40][metric][name][level] = r40 if n_gt > 0 else None
                result[11][metric][name][level] = r11 if n_gt > 0 else None
    return result
