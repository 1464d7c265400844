"""Segmentation metrics against hand-computed values and plain-loop references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from slidr.errors import DataError, SlidrError
from slidr.methods.metrics import (
    accuracy,
    confusion_matrix,
    frequency_weighted_iou,
    iou_per_class,
    mean_iou,
    point_predictions,
    summarize,
)


def loop_confusion(predictions, labels, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(predictions, labels):
        if t != 0:
            matrix[t - 1, p - 1] += 1
    return matrix


def test_confusion_matrix_matches_loop_and_skips_ignore():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=500)
    predictions = rng.integers(1, 6, size=500)
    matrix = confusion_matrix(predictions, labels, 5)
    np.testing.assert_array_equal(matrix.numpy(), loop_confusion(predictions, labels, 5))
    assert int(matrix.sum()) == int((labels > 0).sum())


def test_iou_on_hand_made_matrix_with_absent_classes():
    # classes: 0 present and partly right; 1 never in truth but predicted (IoU 0); 2 absent everywhere (n/a);
    # 3 perfect
    confusion = np.array([
        [6, 2, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [1, 0, 0, 4],
    ])
    ious = iou_per_class(confusion)
    assert ious[0] == pytest.approx(6 / (8 + 7 - 6))
    assert ious[1] == 0.0
    assert math.isnan(ious[2])
    assert ious[3] == pytest.approx(4 / (5 + 4 - 4))
    expected_mean = (6 / 9 + 0 + 4 / 5) / 3  # the absent class is left out, not counted as 1
    assert mean_iou(confusion) == pytest.approx(expected_mean)
    assert accuracy(confusion) == pytest.approx(10 / 13)
    # frequency-weighted: class shares of ground truth 8/13, 0, 0, 5/13
    assert frequency_weighted_iou(confusion) == pytest.approx(8 / 13 * 6 / 9 + 5 / 13 * 4 / 5)


def test_summary_reports_absent_class_as_none_in_percent():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 2]])
    summary = summarize(confusion, ["a", "b", "c"])
    assert summary["per_class"] == {"a": 75.0, "b": 0.0, "c": 100.0}
    assert summary["miou"] == pytest.approx(100 * (0.75 + 0 + 1) / 3, abs=1e-3)
    summary = summarize(np.array([[3, 0, 0], [0, 0, 0], [0, 0, 2]]), ["a", "b", "c"])
    assert summary["per_class"]["b"] is None
    assert summary["miou"] == 100.0
    assert summarize(np.zeros((2, 2)), ["a", "b"])["miou"] is None


def test_frequency_weighted_iou_equals_definition_on_random_matrices():
    rng = np.random.default_rng(1)
    for _ in range(20):
        confusion = rng.integers(0, 50, size=(6, 6))
        confusion[rng.integers(0, 6)] = 0  # a class without ground truth
        ious = iou_per_class(confusion)
        reference = 0.0
        for c in range(6):
            share = confusion[c].sum() / confusion.sum()
            if share > 0:
                reference += share * ious[c]
        assert frequency_weighted_iou(confusion) == pytest.approx(reference)


def test_point_predictions_go_through_inverse_map():
    voxel_logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]])
    inverse_map = torch.tensor([2, 0, 0, 1, 2])
    assert point_predictions(voxel_logits, inverse_map).tolist() == [2, 2, 2, 1, 2]


def test_bad_labels_and_predictions_raise():
    with pytest.raises(DataError, match=r"labels \[7\]"):
        confusion_matrix(np.array([1, 2]), np.array([1, 7]), 3)
    with pytest.raises(DataError, match="predictions"):
        confusion_matrix(np.array([0, 2]), np.array([1, 2]), 3)
    with pytest.raises(DataError, match="2 predictions for 3 labels"):
        confusion_matrix(np.array([1, 2]), np.array([1, 2, 3]), 3)


def test_report_table_json_and_chart(tmp_path):
    from slidr.analysis.report import load_evaluation, per_class_table, write_report

    first = summarize(np.array([[3, 1, 0], [0, 0, 0], [0, 0, 2]]), ["car", "bus", "tree"])
    second = summarize(np.array([[4, 0, 0], [0, 0, 0], [0, 0, 2]]), ["car", "bus", "tree"])
    table = per_class_table({"random": first, "slidr": second})
    lines = table.splitlines()
    assert lines[0] == "| method | mIoU | car | bus | tree |"
    assert lines[2] == "| random | 58.3 | 75.0 | 0.0 | 100.0 |"
    assert lines[3] == "| slidr | 100.0 | 100.0 | n/a | 100.0 |"
    paths = write_report({"random": first, "slidr": second}, tmp_path, stem="t")
    assert paths["chart"].stat().st_size > 1000
    written = json.loads(paths["json"].read_text())
    assert written["runs"]["slidr"]["per_class"]["bus"] is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "evaluation.json").write_text(json.dumps(first))
    assert load_evaluation(tmp_path / "run")["miou"] == first["miou"]
    with pytest.raises(SlidrError, match="does not exist"):
        load_evaluation(tmp_path / "missing")
    other = summarize(np.eye(2, dtype=int), ["a", "b"])
    with pytest.raises(SlidrError, match="different classes"):
        per_class_table({"x": first, "y": other})
