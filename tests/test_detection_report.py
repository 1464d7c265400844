"""KITTI detection reports: markdown tables, JSON and bar chart of kitti_ap results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidr.analysis.detection_report import (
    detection_json,
    detection_table,
    load_detection_evaluation,
    write_detection_report,
)
from slidr.errors import SlidrError
from slidr.methods.detection_eval import KittiObjects, kitti_ap


def frame(names, x, scores=None):
    """Objects 60 px tall in the image, one every 5 m across the road, 20 m ahead."""
    n = len(names)
    left = 100.0 + 120.0 * np.arange(n)
    bbox = np.column_stack([left, np.full(n, 100.0), left + 80.0, np.full(n, 160.0)])
    dims = np.array([[1.5, 1.6, 3.9] if name == "Car" else [1.75, 0.6, 0.8] for name in names]).reshape(n, 3)
    location = np.column_stack([np.asarray(x, dtype=float), np.full(n, 1.6), np.full(n, 20.0)]).reshape(n, 3)
    return KittiObjects.create(names, bbox, dims, location, np.zeros(n), score=scores)


@pytest.fixture(scope="module")
def runs():
    """Two evaluations of 50 frames with a car and a pedestrian each: every object found, or the cars only."""
    gts = [frame(["Car", "Pedestrian"], [0.0, 5.0]) for _ in range(50)]
    everything = [frame(["Car", "Pedestrian"], [0.0, 5.0], [0.9, 0.8]) for _ in range(50)]
    cars_only = [frame(["Car"], [0.0], [0.9]) for _ in range(50)]
    return {"all found": kitti_ap(gts, everything), "cars only": kitti_ap(gts, cars_only)}


def test_tables_hold_the_evaluations(runs):
    table = detection_table(runs, "3d").splitlines()
    assert table[0].startswith("| method | mAP (mod.) | Car easy | Car mod. | Car hard | Pedestrian easy")
    assert table[2] == "| all found | 100.0 | " + " | ".join(["100.0"] * 6 + ["n/a"] * 3) + " |"
    assert table[3] == "| cars only | 50.0 | " + " | ".join(["100.0"] * 3 + ["0.0"] * 3 + ["n/a"] * 3) + " |"
    data = detection_json(runs)
    assert data["metrics"] == ["3d", "bev", "bbox"] and data["recall_positions"] == 40
    assert data["runs"]["cars only"]["map_moderate"]["bev"] == 50.0
    assert data["runs"]["cars only"]["ap"]["3d"]["Cyclist"]["hard"] is None


def test_write_report(tmp_path, runs):
    paths = write_detection_report(runs, tmp_path / "out", title="KITTI val")
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# KITTI val\n") and "## 3D AP|R40" in markdown and "## 2D AP|R40" in markdown
    assert "Car 0.7, Pedestrian 0.5, Cyclist 0.5; 50 frames" in markdown
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(detection_json(runs)))
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["chart"].stat().st_size > 10_000
    # a run's evaluation file reads back (directly, in a run folder, or nested under "evaluation")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "evaluation.json").write_text(json.dumps(runs["cars only"]))
    (tmp_path / "nested.json").write_text(json.dumps({"evaluation": runs["all found"], "model": "x"}))
    loaded = {"a": load_detection_evaluation(tmp_path / "nested.json"),
              "b": load_detection_evaluation(tmp_path / "run")}
    assert detection_table(loaded) == detection_table(dict(zip("ab", [runs["all found"], runs["cars only"]])))


def test_bad_inputs_are_refused(tmp_path, runs):
    with pytest.raises(SlidrError, match="does not exist"):
        load_detection_evaluation(tmp_path / "missing")
    (tmp_path / "seg.json").write_text(json.dumps({"miou": 40.0, "per_class": {}}))
    with pytest.raises(SlidrError, match="no KITTI detection evaluation"):
        load_detection_evaluation(tmp_path / "seg.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SlidrError, match="not valid JSON"):
        load_detection_evaluation(tmp_path / "bad.json")
    r11 = dict(runs["all found"], recall_positions=11)
    with pytest.raises(SlidrError, match="evaluated differently"):
        detection_table({"r40": runs["all found"], "r11": r11})
    with pytest.raises(SlidrError, match="aos"):
        write_detection_report(runs, tmp_path / "out", metrics=["aos"])
    with pytest.raises(SlidrError, match="no run"):
        detection_table({})
