"""Label mapping on real SemanticKITTI scans, checked against an independent mapping through class names."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from slidr.data.classes import SEMANTICKITTI_CLASSES, SEMANTICKITTI_RAW_LABELS
from slidr.data.io import read_points, read_semantickitti_labels

# semantic-kitti.yaml's learning map, written as raw name -> evaluation class name (None = ignore)
RAW_NAME_TO_CLASS = {
    "unlabeled": None, "outlier": None, "car": "car", "bicycle": "bicycle", "bus": "other-vehicle",
    "motorcycle": "motorcycle", "on-rails": "other-vehicle", "truck": "truck", "other-vehicle": "other-vehicle",
    "person": "person", "bicyclist": "bicyclist", "motorcyclist": "motorcyclist", "road": "road",
    "parking": "parking", "sidewalk": "sidewalk", "other-ground": "other-ground", "building": "building",
    "fence": "fence", "other-structure": None, "lane-marking": "road", "vegetation": "vegetation",
    "trunk": "trunk", "terrain": "terrain", "pole": "pole", "traffic-sign": "traffic-sign", "other-object": None,
    "moving-car": "car", "moving-bicyclist": "bicyclist", "moving-person": "person",
    "moving-motorcyclist": "motorcyclist", "moving-on-rails": "other-vehicle", "moving-bus": "other-vehicle",
    "moving-truck": "truck", "moving-other-vehicle": "other-vehicle",
}


@pytest.mark.parametrize("frame", ["000000", "000001", "000002"])
def test_semantickitti_histogram_matches_name_mapping(semantickitti_scans, frame):
    points = read_points(semantickitti_scans / f"{frame}.bin", 4)
    label_path = semantickitti_scans / f"{frame}.label"
    mapped = read_semantickitti_labels(label_path, points.kept.size)
    assert mapped.shape == (points.points.shape[0],)

    raw = np.fromfile(label_path, dtype=np.uint32) & 0xFFFF
    expected = collections.Counter()
    for raw_id, count in zip(*np.unique(raw, return_counts=True)):
        expected[RAW_NAME_TO_CLASS[SEMANTICKITTI_RAW_LABELS[int(raw_id)]] or "ignore"] += int(count)
    names = ("ignore",) + SEMANTICKITTI_CLASSES
    got = {names[i]: int(n) for i, n in enumerate(np.bincount(mapped, minlength=20)) if n}
    assert got == dict(expected)
    if frame == "000000":  # a street scene: the big classes are there
        for name in ("road", "car", "building", "vegetation", "sidewalk"):
            assert got.get(name, 0) > 1000, name
