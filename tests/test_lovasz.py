"""Lovasz-softmax against its definition as an integral over thresholds of the Jaccard set loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from slidr.methods.lovasz import lovasz_softmax


def jaccard_set_loss(mispredicted: set[int], members: set[int]) -> float:
    union = members | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def brute_force_lovasz(probabilities: np.ndarray, targets: np.ndarray, classes: str = "present") -> float:
    """Lovasz extension as ``integral_0^1 Delta({i : m_i >= t}) dt`` (Delta(empty) = 0), with Python sets."""
    losses = []
    for c in range(probabilities.shape[1]):
        members = {i for i, t in enumerate(targets) if t == c}
        if classes == "present" and not members:
            continue
        errors = np.abs((targets == c).astype(float) - probabilities[:, c])
        thresholds = sorted(set(errors.tolist()) | {0.0}, reverse=True)
        total = 0.0
        for upper, lower in zip(thresholds, thresholds[1:] + [0.0]):
            level_set = {i for i, e in enumerate(errors) if e >= upper}
            total += (upper - lower) * jaccard_set_loss(level_set, members)
        losses.append(total)
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("classes", ["present", "all"])
def test_matches_brute_force_definition(seed, classes):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(9, 4)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, 3, size=9)  # class 3 absent from the targets
    loss = lovasz_softmax(torch.tensor(probabilities), torch.tensor(targets), classes=classes)
    assert float(loss) == pytest.approx(brute_force_lovasz(probabilities, targets, classes), abs=1e-12)


def test_equals_one_minus_iou_on_one_hot_predictions():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 3, size=30)
    predictions = np.where(rng.random(30) < 0.7, targets, rng.integers(0, 3, size=30))
    probabilities = np.eye(3)[predictions]
    loss = lovasz_softmax(torch.tensor(probabilities), torch.tensor(targets))
    ious = [((predictions == c) & (targets == c)).sum() / ((predictions == c) | (targets == c)).sum()
            for c in range(3)]
    assert float(loss) == pytest.approx(1 - np.mean(ious))


def test_ignored_points_do_not_matter():
    rng = np.random.default_rng(4)
    probabilities = torch.softmax(torch.tensor(rng.normal(size=(12, 3))), dim=1)
    targets = torch.tensor(rng.integers(0, 3, size=12))
    targets_with_ignored = targets.clone()
    targets_with_ignored[::3] = -1
    expected = lovasz_softmax(probabilities[targets_with_ignored != -1], targets[targets_with_ignored != -1])
    assert float(lovasz_softmax(probabilities, targets_with_ignored, ignore_index=-1)) == pytest.approx(
        float(expected))
    assert float(lovasz_softmax(probabilities, torch.full((12,), -1), ignore_index=-1)) == 0.0


def test_gradient_matches_finite_differences_and_descends():
    torch.manual_seed(0)
    logits = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    # away from ties the loss is smooth in the logits
    assert torch.autograd.gradcheck(lambda x: lovasz_softmax(torch.softmax(x, 1), targets), (logits,))
    values = []
    for _ in range(50):
        loss = lovasz_softmax(torch.softmax(logits, 1), targets)
        values.append(float(loss.detach()))
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            logits -= 1.0 * grad
    assert values[-1] < 0.5 * values[0]


def test_permutation_invariance():
    rng = np.random.default_rng(5)
    probabilities = torch.softmax(torch.tensor(rng.normal(size=(10, 3))), dim=1)
    targets = torch.tensor(rng.integers(0, 3, size=10))
    for permutation in itertools.islice(itertools.permutations(range(10)), 0, 200, 37):
        index = torch.tensor(permutation)
        assert float(lovasz_softmax(probabilities[index], targets[index])) == pytest.approx(
            float(lovasz_softmax(probabilities, targets)))
