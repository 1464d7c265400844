"""Semantic-segmentation metrics: confusion matrix, per-class IoU, mIoU, frequency-weighted IoU, accuracy.

Conventions (the same for every command that reports a score):

- Labels are evaluation indices: 0 is *ignore*, classes are ``1..C``. Points whose ground truth is 0 are left
  out of the confusion matrix; predictions are always in ``1..C`` (the classifier has no "ignore" output).
- The confusion matrix is counted over **all original points** of a scan: voxel predictions are mapped back to
  the points through the voxel inverse map before counting (:func:`point_predictions`).
- A class absent from both the ground truth and the predictions has no defined IoU (0 / 0). It is reported as
  not available (``None`` in JSON, ``n/a`` in tables) and left out of the mean. The authors' release counts such a
  class as IoU 1, which inflates the mIoU of small splits where rare classes are missing; our numbers are
  therefore never above theirs on the same confusion matrix.
- Frequency-weighted IoU is what its name says: the IoU of each class weighted by that class's share of the
  ground-truth points, ``sum_c (n_c / n) IoU_c``. (The authors' ``fw_IoU`` is ``sum TP / (2 N - sum TP)``, a
  different quantity.)
- Accuracy is the fraction of labelled points predicted correctly. Summaries are in percent.

Inside Lightning, :class:`SegmentationConfusion` accumulates the confusion matrix of the batches a process sees
and sums it over processes when computed (torchmetrics' synchronisation), so the scores of an evaluation shared
by several processes are those of one process seeing every point; :func:`summarize` applies the conventions
above on top.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torchmetrics

from slidr.errors import DataError


def confusion_matrix(predictions: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     num_classes: int) -> torch.Tensor:
    """Count (ground truth, prediction) pairs of the labelled points.

    Parameters
    ----------
    predictions : (N,) integer tensor or array
        Predicted evaluation indices in ``1..num_classes``.
    labels : (N,) integer tensor or array
        Ground-truth evaluation indices in ``0..num_classes`` (0 = ignore, those points are not counted).
    num_classes : int
        Number of evaluation classes C.

    Returns
    -------
    (C, C) int64 tensor on the device of ``predictions``
        ``matrix[t - 1, p - 1]`` counts points of true class ``t`` predicted as ``p``.

    Raises
    ------
    DataError
        If a label is outside ``0..C`` or a prediction outside ``1..C``.
    """
    predictions = torch.as_tensor(predictions).long().reshape(-1)
    labels = torch.as_tensor(labels, device=predictions.device).long().reshape(-1)
    if predictions.shape != labels.shape:
        raise DataError(f"{predictions.numel()} predictions for {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        bad = torch.unique(labels[(labels < 0) | (labels > num_classes)])[:10].tolist()
        raise DataError(f"labels {bad} are not evaluation indices 0..{num_classes} (0 = ignore)")
    labelled = labels > 0
    truth, predicted = labels[labelled] - 1, predictions[labelled] - 1
    if predicted.numel() and (int(predicted.min()) < 0 or int(predicted.max()) >= num_classes):
        raise DataError(f"predictions must be class indices 1..{num_classes}")
    counts = torch.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class SegmentationConfusion(torchmetrics.Metric):
    """The confusion matrix (C, C) of every labelled point seen, summed over processes when computed.

    ``update(predictions (N,) in 1..C, labels (N,) in 0..C)`` adds :func:`confusion_matrix`;
    ``compute()`` returns the int64 (C, C) counts (rows truth), the same on every process.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    confusion: torch.Tensor  # a state registered in __init__

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.confusion += confusion_matrix(predictions, labels, self.num_classes).to(self.confusion.device)

    def compute(self) -> torch.Tensor:
        return self.confusion


def point_predictions(voxel_logits: torch.Tensor, inverse_map: torch.Tensor) -> torch.Tensor:
    """Per-point predicted evaluation indices from per-voxel class scores.

    Parameters
    ----------
    voxel_logits : (V, C) float tensor
        Class scores of each voxel (any monotonic transform of the probabilities).
    inverse_map : (N,) int64 tensor
        The voxel of each original point.

    Returns
    -------
    (N,) int64 tensor
        Evaluation index ``1..C`` of each original point.
    """
    return voxel_logits.argmax(dim=1)[inverse_map] + 1


def iou_per_class(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU of each class as a fraction; NaN where the class is absent from ground truth and predictions.

    Parameters
    ----------
    confusion : (C, C) counts, rows = ground truth, columns = prediction.

    Returns
    -------
    (C,) float64 array
    """
    confusion = _as_numpy(confusion)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)


def mean_iou(confusion: torch.Tensor | np.ndarray) -> float:
    """Mean IoU (fraction) over the classes whose IoU is available; NaN when none is."""
    ious = iou_per_class(confusion)
    available = ~np.isnan(ious)
    return float(ious[available].mean()) if available.any() else float("nan")


def frequency_weighted_iou(confusion: torch.Tensor | np.ndarray) -> float:
    """``sum_c (n_c / n) IoU_c`` with ``n_c`` the ground-truth points of class c (fraction; NaN if n = 0)."""
    confusion = _as_numpy(confusion)
    class_points = confusion.sum(axis=1)
    total = class_points.sum()
    if total == 0:
        return float("nan")
    ious = np.nan_to_num(iou_per_class(confusion), nan=0.0)  # classes with n_c = 0 carry zero weight anyway
    return float((class_points / total * ious).sum())


def accuracy(confusion: torch.Tensor | np.ndarray) -> float:
    """Fraction of labelled points predicted correctly (NaN if there are none)."""
    confusion = _as_numpy(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def summarize(confusion: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> dict:
    """All scores of a confusion matrix, in percent, ready for JSON.

    Parameters
    ----------
    confusion : (C, C) counts, rows = ground truth, columns = prediction.
    class_names : C names, class i + 1 first.

    Returns
    -------
    dict
        ``miou``, ``fwiou``, ``accuracy`` (percent, None when undefined), ``per_class`` (name -> IoU in percent
        or None when not available), ``points_per_class`` (name -> ground-truth points), ``num_points`` and
        ``confusion`` (the matrix as nested lists).
    """
    confusion = _as_numpy(confusion)
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {confusion.shape} does not match {len(class_names)} class names")
    ious = iou_per_class(confusion)
    return {
        "miou": _percent(mean_iou(confusion)),
        "fwiou": _percent(frequency_weighted_iou(confusion)),
        "accuracy": _percent(accuracy(confusion)),
        "per_class": {name: _percent(value) for name, value in zip(class_names, ious)},
        "points_per_class": {name: int(n) for name, n in zip(class_names, confusion.sum(axis=1))},
        "num_points": int(confusion.sum()),
        "confusion": confusion.tolist(),
    }


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else round(100.0 * float(value), 4)


def _as_numpy(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {confusion.shape}")
    return confusion
