"""ScaLR's cosine distillation and ST-SLidR's semantically tolerant InfoNCE against brute-force references
(tests/reference), their gradients, empty inputs and invariances; the camera choice and the projection head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference.scalr import scalr_loss
from reference.stslidr import linear_quantile, stslidr_loss
from slidr.config import ConfigError
from slidr.data.pairing import one_camera_per_sample, pairs_in_labelled_superpixels
from slidr.methods.losses import (
    _row_quantile,
    class_balance_weights,
    cosine_distillation,
    features_at_pixels,
    semantic_tolerance_weights,
    semantically_tolerant_infonce,
    superpixel_infonce,
)
from slidr.models.heads import ProjectionHead

TEMPERATURE = 0.07


# ----------------------------------------------------------------------------------------------------------------
# ScaLR
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cosine_distillation_equals_brute_force_values_and_gradients(seed, distance):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(17, 5, generator=generator, dtype=torch.float64) * 3
    pixels = torch.randn(17, 5, generator=generator, dtype=torch.float64)
    points_a, pixels_a = points.clone().requires_grad_(), pixels.clone().requires_grad_()
    points_b, pixels_b = points.clone().requires_grad_(), pixels.clone().requires_grad_()

    loss, stats = cosine_distillation(points_a, pixels_a, distance)
    expected = scalr_loss(points_b, pixels_b, distance)
    loss.backward()
    expected.backward()

    assert stats["pairs"] == 17 and stats["empty"] is False
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(points_a.grad, points_b.grad, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(pixels_a.grad, pixels_b.grad, rtol=1e-5, atol=1e-12)
    assert stats["cosine"] == pytest.approx(float(F.cosine_similarity(points, pixels).mean()))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_cosine_distillation_is_0_for_parallel_2_for_opposite_and_scale_invariant(distance):
    features = torch.randn(9, 4, dtype=torch.float64)
    scales = torch.rand(9, 1, dtype=torch.float64) + 0.1
    assert float(cosine_distillation(features, features * scales, distance)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(cosine_distillation(features, -features * scales, distance)[0]) == pytest.approx(2.0)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 3.0], [-1.0, 0.0]])
    assert float(cosine_distillation(*orthogonal, distance)[0]) == pytest.approx(
        math.sqrt(2.0) if distance == "euclidean" else 1.0)
    other = torch.randn(9, 4, dtype=torch.float64)
    assert torch.allclose(cosine_distillation(features * scales, other * 7.0, distance)[0],
                          cosine_distillation(features, other, distance)[0])


def test_cosine_distillation_gradient_is_finite_where_the_features_coincide():
    features = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = cosine_distillation(features, features.detach().clone())
    loss.backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_cosine_distillation_gradcheck(distance):
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    pixels = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cosine_distillation(a, b, distance)[0], (points, pixels))


def test_cosine_distillation_without_pairs_is_an_attached_exact_zero():
    points = torch.zeros(0, 8, requires_grad=True)
    pixels = torch.zeros(0, 8, requires_grad=True)
    loss, stats = cosine_distillation(points, pixels)
    assert float(loss.detach()) == 0.0 and stats["empty"] is True and stats["pairs"] == 0
    assert loss.requires_grad
    loss.backward()
    assert points.grad is not None and not points.grad.any()


def test_cosine_distillation_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        cosine_distillation(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="distance"):
        cosine_distillation(torch.zeros(3, 4), torch.zeros(3, 4), "l1")


def test_features_at_pixels_reads_the_paired_pixels():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    pairing = torch.tensor([[0, 0, 0], [1, 3, 4], [1, 2, 1]])
    expected = torch.stack([maps[0, :, 0, 0], maps[1, :, 3, 4], maps[1, :, 2, 1]])
    assert torch.equal(features_at_pixels(maps, pairing), expected)


# ----------------------------------------------------------------------------------------------------------------
# ST-SLidR
# ----------------------------------------------------------------------------------------------------------------


def random_st_batch(seed, num_images=3, channels=4, height=6, width=8, num_pairs=40, num_labels=7,
                    teacher_hw=(3, 4), teacher_channels=5, empty_image=True):
    """Random features, superpixels with ids that receive no point, and (when ``empty_image``) a last camera
    with no pair at all."""
    generator = torch.Generator().manual_seed(seed)
    points = F.normalize(torch.randn(num_pairs, channels, generator=generator, dtype=torch.float64), dim=1)
    pixels = F.normalize(torch.randn(num_images, channels, height, width, generator=generator,
                                      dtype=torch.float64), dim=1)
    superpixels = torch.randint(0, num_labels, (num_images, height, width), generator=generator)
    superpixels[0, :2, :2] = 40  # a sparse, small id
    paired_images = num_images - 1 if empty_image else num_images
    pairing = torch.stack([torch.randint(0, paired_images, (num_pairs,), generator=generator),
                           torch.randint(0, height, (num_pairs,), generator=generator),
                           torch.randint(0, width, (num_pairs,), generator=generator)], dim=1)
    # non-negative teacher features, as a ResNet's post-ReLU maps, that depend on the superpixel under the cell
    # (plus noise): similarities between superpixels spread over [0, 1]
    rows = torch.arange(teacher_hw[0]) * height // teacher_hw[0]
    cols = torch.arange(teacher_hw[1]) * width // teacher_hw[1]
    under = superpixels[:, rows][:, :, cols]
    base = torch.randn(int(superpixels.max()) + 1, teacher_channels, generator=generator, dtype=torch.float64)
    noise = torch.randn(num_images, *teacher_hw, teacher_channels, generator=generator, dtype=torch.float64)
    teacher = torch.relu(base[under] + 0.3 * noise).permute(0, 3, 1, 2).contiguous()
    return points, pairing, pixels, superpixels, teacher


ST_SETTINGS = [
    {"min_quantile": 0.01, "max_quantile": 1.0, "class_balance": True},  # the release's classbalance configs
    {"min_quantile": 0.01, "max_quantile": 1.0, "class_balance": False},  # its stslidr_* configs
    {"min_quantile": 0.0, "max_quantile": 1.0, "class_balance": True},  # soft weights 1 - S
    {"min_quantile": 0.3, "max_quantile": 0.85, "class_balance": True},  # both quantiles dropping negatives
]


@pytest.mark.parametrize("teacher_hw", [(3, 4), (6, 8), (4, 5)])
@pytest.mark.parametrize("settings", ST_SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_st_slidr_equals_brute_force_values_and_gradients(seed, settings, teacher_hw):
    points, pairing, pixels, superpixels, teacher = random_st_batch(seed, teacher_hw=teacher_hw)
    points_a, pixels_a = points.clone().requires_grad_(), pixels.clone().requires_grad_()
    points_b, pixels_b = points.clone().requires_grad_(), pixels.clone().requires_grad_()

    loss, stats = semantically_tolerant_infonce(points_a, pairing, pixels_a, superpixels, teacher, TEMPERATURE,
                                                **settings)
    expected, kept, unseen = stslidr_loss(points_b, pairing, pixels_b, superpixels, teacher, TEMPERATURE,
                                          settings["min_quantile"], settings["max_quantile"],
                                          settings["class_balance"])
    loss.backward()
    expected.backward()

    assert stats["superpixels"] == kept and stats["unseen_by_teacher"] == unseen and stats["empty"] is False
    assert kept > 5
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(points_a.grad, points_b.grad, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(pixels_a.grad, pixels_b.grad, rtol=1e-5, atol=1e-10)
    assert not pixels_a.grad[-1].any()  # the camera without pairs: no superpixel, no gradient


def test_st_slidr_drops_superpixels_the_teacher_does_not_see():
    points, pairing, pixels, superpixels, teacher = random_st_batch(0, teacher_hw=(3, 4), num_pairs=120)
    # id 40 covers pixels (0..1, 0..1) of image 0; cell (0, 0) reads pixel (0, 0): overwrite it with label 1 so
    # that 40 vanishes at the teacher's resolution, and make sure 40 has points
    superpixels[0, 0, 0] = 1
    pairing[0] = torch.tensor([0, 1, 1])
    _, stats = semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher, TEMPERATURE)
    _, kept, unseen = stslidr_loss(points, pairing, pixels, superpixels, teacher, TEMPERATURE)
    assert stats["unseen_by_teacher"] == unseen >= 1 and stats["superpixels"] == kept


@pytest.mark.parametrize("class_balance", [True, False])
def test_st_slidr_with_all_weights_one_is_the_slidr_loss(class_balance):
    """Orthogonal teacher features (S = I): every negative weight and anchor weight is 1 -> SLidR's loss."""
    points, pairing, pixels, superpixels, _ = random_st_batch(2, teacher_hw=(6, 8))
    num_images, _, height, width = pixels.shape
    _, dense = torch.unique(superpixels, return_inverse=True)
    global_ids = dense + torch.arange(num_images).reshape(-1, 1, 1) * (int(dense.max()) + 1)
    teacher = F.one_hot(global_ids, int(global_ids.max()) + 1).permute(0, 3, 1, 2).to(torch.float64)
    for min_quantile, max_quantile in ((0.0, 1.0), (0.01, 1.0)):
        loss, stats = semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher, TEMPERATURE,
                                                    min_quantile, max_quantile, class_balance)
        reference, reference_stats = superpixel_infonce(points, pairing, pixels, superpixels, TEMPERATURE)
        assert stats["superpixels"] == reference_stats["superpixels"]
        torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)


def test_st_slidr_gradcheck():
    points, pairing, pixels, superpixels, teacher = random_st_batch(4, num_images=2, channels=3, height=4,
                                                                    width=5, num_pairs=14, num_labels=4,
                                                                    teacher_hw=(2, 3))
    points.requires_grad_()
    pixels.requires_grad_()

    def loss(a, b):
        return semantically_tolerant_infonce(a, pairing, b, superpixels, teacher, TEMPERATURE, 0.2, 0.9)[0]

    assert torch.autograd.gradcheck(loss, (points, pixels))


def test_st_slidr_without_any_pair_is_an_attached_exact_zero():
    points, _, pixels, superpixels, teacher = random_st_batch(0)
    points = torch.zeros(0, points.shape[1], dtype=torch.float64, requires_grad=True)
    pixels.requires_grad_()
    loss, stats = semantically_tolerant_infonce(points, torch.zeros(0, 3, dtype=torch.long), pixels, superpixels,
                                                teacher)
    assert float(loss.detach()) == 0.0 and loss.requires_grad and stats["empty"] is True and stats["superpixels"] == 0
    loss.backward()
    assert pixels.grad is not None and not pixels.grad.any()


def test_st_slidr_with_a_blind_teacher_is_an_attached_exact_zero():
    points, pairing, pixels, superpixels, teacher = random_st_batch(0)
    points.requires_grad_()
    loss, stats = semantically_tolerant_infonce(points, pairing, pixels, superpixels, torch.zeros_like(teacher))
    assert float(loss.detach()) == 0.0 and loss.requires_grad and stats["empty"] is True
    assert stats["unseen_by_teacher"] > 0
    loss.backward()
    assert not points.grad.any()


def test_st_slidr_with_one_superpixel_is_zero_and_finite():
    points, pairing, pixels, _, teacher = random_st_batch(0)
    superpixels = torch.zeros(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)
    pairing[:, 0] = 0
    points.requires_grad_()
    loss, stats = semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher)
    assert stats["superpixels"] == 1 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(points.grad).all()


def test_st_slidr_weights_and_balance_by_hand():
    similarity = torch.tensor([[1.0, 0.9, 0.5, -0.2],
                               [0.9, 1.0, 0.4, 0.1],
                               [0.5, 0.4, 1.0, 0.7],
                               [-0.2, 0.1, 0.7, 1.0]], dtype=torch.float64)
    soft = semantic_tolerance_weights(similarity, 0.0, 1.0)
    assert torch.allclose(soft, torch.tensor([[1.0, 0.1, 0.5, 1.0], [0.1, 1.0, 0.6, 0.9], [0.5, 0.6, 1.0, 0.3],
                                              [1.0, 0.9, 0.3, 1.0]], dtype=torch.float64))
    # row 0 of 1 - clip(S): [0, .1, .5, 1]; its 0.5 quantile is .3 (keeps .5 and 1), its 0.9 quantile .85 (drops 1)
    hard = semantic_tolerance_weights(similarity, 0.5, 0.9)
    assert hard[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    # a negative exactly as similar as the positive has weight 1 - 1 = 0, which the binarisation keeps at 0
    duplicate = torch.tensor([[1.0, 1.0, 0.2], [1.0, 1.0, 0.3], [0.2, 0.3, 1.0]], dtype=torch.float64)
    assert semantic_tolerance_weights(duplicate, 0.01, 1.0)[0].tolist() == [1.0, 0.0, 1.0]
    # votes (S >= 0.5, 0.5 included): [2.4, 1.9, 2.2, 1.7] -> minus 1.7: [.7, .2, .5, 0] -> 1 - v / .7
    balance = class_balance_weights(similarity, 0.5)
    assert torch.allclose(balance, torch.tensor([0.0, 5 / 7, 2 / 7, 1.0], dtype=torch.float64))
    assert torch.equal(class_balance_weights(torch.eye(3)), torch.ones(3))


def test_row_quantile_matches_torch_and_the_reference():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(6, 37, generator=generator, dtype=torch.float64)
    for q in (0.0, 0.01, 0.3, 0.5, 0.97, 1.0):
        ours = _row_quantile(values, q)
        assert torch.allclose(ours, torch.quantile(values, q, dim=1))
        assert ours.tolist() == pytest.approx([linear_quantile(row.tolist(), q) for row in values])


def test_st_slidr_rejects_bad_inputs():
    points, pairing, pixels, superpixels, teacher = random_st_batch(0)
    with pytest.raises(ValueError, match="min_quantile"):
        semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher, min_quantile=0.5,
                                      max_quantile=0.2)
    with pytest.raises(ValueError, match="teacher_features"):
        semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher[:1])
    with pytest.raises(ValueError, match="larger"):
        semantically_tolerant_infonce(points, pairing, pixels, superpixels,
                                      teacher.repeat_interleave(4, dim=2))
    with pytest.raises(ValueError, match="superpixels"):
        semantically_tolerant_infonce(points, pairing, pixels, None, teacher)


# ----------------------------------------------------------------------------------------------------------------
# Camera choice, unlabelled pixels, projection head
# ----------------------------------------------------------------------------------------------------------------


def _pairing(images, per_image=5):
    rows = []
    for image in images:
        rows += [[image, r, r + 1] for r in range(per_image)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def test_one_camera_per_sample_keeps_exactly_the_chosen_cameras_pairs():
    cameras, samples = 6, 3
    pairing = _pairing([0, 1, 5, 6, 8, 13, 17])
    choice = one_camera_per_sample(pairing, cameras, samples, torch.Generator().manual_seed(0))
    assert choice.images.shape == (samples,)
    assert torch.equal(choice.images // cameras, torch.arange(samples))
    image = pairing[:, 0]
    expected_keep = torch.tensor([bool(int(i) in choice.images.tolist()) for i in image])
    assert torch.equal(choice.keep, expected_keep)
    assert torch.equal(choice.pairing_images[:, 0], image[choice.keep] // cameras)
    assert torch.equal(choice.pairing_images[:, 1:], pairing[choice.keep, 1:])
    again = one_camera_per_sample(pairing, cameras, samples, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, choice.images)


def test_one_camera_per_sample_draws_uniformly_or_among_paired_cameras():
    cameras = 6
    pairing = _pairing([2, 4])  # one scan, pairs in cameras 2 and 4 only
    generator = torch.Generator().manual_seed(1)
    uniform = [int(one_camera_per_sample(pairing, cameras, 1, generator).images[0]) for _ in range(3000)]
    counts = np.bincount(uniform, minlength=cameras)
    assert counts.min() > 400  # 500 expected per camera
    paired = {int(one_camera_per_sample(pairing, cameras, 1, generator, require_pairs=True).images[0])
              for _ in range(200)}
    assert paired == {2, 4}
    nothing = one_camera_per_sample(torch.zeros(0, 3, dtype=torch.long), cameras, 2, generator, require_pairs=True)
    assert nothing.images.shape == (2,) and nothing.keep.numel() == 0 and nothing.pairing_images.shape == (0, 3)
    with pytest.raises(ValueError, match="pairing image indices"):
        one_camera_per_sample(_pairing([12]), cameras, 2)


def test_pairs_on_unlabelled_pixels_are_left_out():
    superpixels = torch.tensor([[[0, 3], [3, 5]], [[2, 0], [0, 0]]])
    pairing = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 1]])
    assert pairs_in_labelled_superpixels(pairing, superpixels).tolist() == [False, True, True, True, False]


def test_projection_head_kinds():
    features = torch.randn(11, 8)
    linear = ProjectionHead(8, 16)
    layer = linear.layers[0]
    assert torch.allclose(linear(features), features @ layer.weight.T + layer.bias)
    mlp = ProjectionHead(8, 16, "mlp")
    assert mlp(features).shape == (11, 16) and mlp.layers[0].out_features == 8
    assert ProjectionHead(8, 16, "mlp", hidden_channels=32).layers[0].out_features == 32
    assert ProjectionHead(8, 16)(torch.zeros(0, 8)).shape == (0, 16)
    with pytest.raises(ConfigError, match="kind"):
        ProjectionHead(8, 16, "conv")
    with pytest.raises(ConfigError, match="hidden_channels"):
        ProjectionHead(8, 16, "linear", hidden_channels=4)
