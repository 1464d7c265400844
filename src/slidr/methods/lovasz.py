"""Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018), written from the paper's definition.

For class c, let ``m_i = |[y_i = c] - p_i(c)|`` be the error of point i. The Jaccard loss of a set M of mispredicted
points is ``Delta_c(M) = |M| / |{y = c} u M|``. Its Lovasz extension evaluated at the error vector m is

    loss_c(m) = sum_k m_(k) * (Delta_c({(1), ..., (k)}) - Delta_c({(1), ..., (k - 1)}))

with ``m_(1) >= m_(2) >= ...`` the errors sorted in decreasing order. Along that order, the set of the first k
points holds ``k - tp_k`` points of other classes and misses ``n_c - tp_k`` points of class c, where ``tp_k`` counts
the class-c points among them; so ``Delta_c`` of the prefix is ``1 - (n_c - tp_k) / (n_c + k - tp_k)`` and the
whole loss is one sort and two cumulative sums per class, vectorised over classes here. The loss is piecewise
linear in m, with gradient the vector of Jaccard increments: a tight convex surrogate of 1 - IoU that equals it
exactly when the probabilities are one-hot.
"""

from __future__ import annotations

from typing import Literal

import torch


def lovasz_softmax(probabilities: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None,
                   classes: Literal["present", "all"] = "present") -> torch.Tensor:
    """Lovasz-softmax loss, the mean over classes of the Lovasz extension of the Jaccard loss.

    Parameters
    ----------
    probabilities : (P, C) float tensor
        Class probabilities of each point (softmax of the logits).
    targets : (P,) int64 tensor
        Class of each point in ``0..C-1``, or ``ignore_index``.
    ignore_index : int, optional
        Target value of points to leave out.
    classes : {"present", "all"}
        Average over the classes present in ``targets`` (the paper's default for segmentation) or over all C.

    Returns
    -------
    scalar tensor
        0 when no point is left (keeps the graph, so a batch without labels gives zero gradients).
    """
    if probabilities.ndim != 2 or targets.shape != probabilities.shape[:1]:
        raise ValueError(f"expected probabilities (P, C) and targets (P,), got {tuple(probabilities.shape)} "
                         f"and {tuple(targets.shape)}")
    if ignore_index is not None:
        keep = targets != ignore_index
        probabilities, targets = probabilities[keep], targets[keep]
    if targets.numel() == 0:
        return probabilities.sum() * 0.0
    num_classes = probabilities.shape[1]
    foreground = torch.nn.functional.one_hot(targets, num_classes).to(probabilities.dtype)  # (P, C)
    errors = (foreground - probabilities).abs()
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    foreground_sorted = torch.gather(foreground, 0, order)
    per_class = (errors_sorted * jaccard_increments(foreground_sorted)).sum(dim=0)  # (C,)
    if classes == "present":
        present = foreground.sum(dim=0) > 0
        return per_class[present].mean()
    return per_class.mean()


def jaccard_increments(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss along a sorted order: the gradient of the Lovasz extension.

    Parameters
    ----------
    foreground_sorted : (P, C) float tensor
        1 where the k-th point of class c's order belongs to class c, else 0.

    Returns
    -------
    (P, C) float tensor
        ``Delta_c(first k) - Delta_c(first k - 1)`` for k = 1..P (with ``Delta_c(empty) = 0``).
    """
    class_points = foreground_sorted.sum(dim=0, keepdim=True)
    true_positives = foreground_sorted.cumsum(dim=0)
    false_positives = (1.0 - foreground_sorted).cumsum(dim=0)
    intersection = class_points - true_positives  # class points not (yet) mispredicted
    union = class_points + false_positives
    jaccard = 1.0 - intersection / union  # union >= 1: every point is either in class c or a false positive
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
