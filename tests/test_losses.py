"""The contrastive losses against brute-force references written with plain Python loops, and invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slidr.methods.losses import moco_infonce, point_infonce, ppkt_infonce, superpixel_infonce

TEMPERATURE = 0.07


def brute_info_nce(anchors, positives, temperature):
    """-mean_i log(exp(a_i.p_i / t) / sum_j exp(a_i.p_j / t)), one scalar at a time."""
    total = 0.0
    for i in range(len(anchors)):
        logits = [sum(anchors[i][c] * positives[j][c] for c in range(len(anchors[i]))) / temperature
                  for j in range(len(positives))]
        total = total - (logits[i] - torch.logsumexp(torch.stack(logits), 0))
    return total / len(anchors)


def brute_superpixel_loss(point_features, pairing_images, pixel_features, superpixels, temperature,
                          renormalize=False):
    """The SLidR loss from its definition: loops over images, superpixels, pixels and pairs."""
    num_images, channels, height, width = pixel_features.shape
    superpoints, superpixel_means = [], []
    for m in range(num_images):
        for label in sorted({int(v) for v in superpixels[m].flatten()}):
            pairs = [p for p in range(len(pairing_images))
                     if int(pairing_images[p][0]) == m
                     and int(superpixels[m][int(pairing_images[p][1])][int(pairing_images[p][2])]) == label]
            if not pairs:
                continue
            pixels = [(r, c) for r in range(height) for c in range(width) if int(superpixels[m][r][c]) == label]
            point_mean = sum(point_features[p] for p in pairs) / len(pairs)
            pixel_mean = sum(pixel_features[m, :, r, c] for r, c in pixels) / len(pixels)
            if renormalize:
                point_mean, pixel_mean = point_mean / point_mean.norm(), pixel_mean / pixel_mean.norm()
            superpoints.append(point_mean)
            superpixel_means.append(pixel_mean)
    return brute_info_nce(superpoints, superpixel_means, temperature), len(superpoints)


def random_batch(seed, num_images=3, channels=4, height=5, width=6, num_pairs=25, num_labels=5):
    generator = torch.Generator().manual_seed(seed)
    point_features = F.normalize(torch.randn(num_pairs, channels, generator=generator, dtype=torch.float64), dim=1)
    pixel_features = F.normalize(
        torch.randn(num_images, channels, height, width, generator=generator, dtype=torch.float64), dim=1
    )
    superpixels = torch.randint(0, num_labels, (num_images, height, width), generator=generator)
    pairing_images = torch.stack(
        [
            torch.randint(0, num_images, (num_pairs,), generator=generator),
            torch.randint(0, height, (num_pairs,), generator=generator),
            torch.randint(0, width, (num_pairs,), generator=generator),
        ],
        dim=1,
    )
    return point_features, pairing_images, pixel_features, superpixels


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_superpixel_loss_equals_brute_force_values_and_gradients(seed, renormalize):
    points, pairing, pixels, superpixels = random_batch(seed)
    points_a, pixels_a = points.clone().requires_grad_(), pixels.clone().requires_grad_()
    points_b, pixels_b = points.clone().requires_grad_(), pixels.clone().requires_grad_()

    loss, stats = superpixel_infonce(points_a, pairing, pixels_a, superpixels, TEMPERATURE, renormalize)
    expected, kept = brute_superpixel_loss(points_b, pairing, pixels_b, superpixels, TEMPERATURE, renormalize)
    loss.backward()
    expected.backward()

    assert stats == {"pairs": len(pairing), "superpixels": kept, "empty": False}
    assert kept < superpixels.shape[0] * 5  # some superpixels receive no point and are dropped
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(points_a.grad, points_b.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pixels_a.grad, pixels_b.grad, rtol=1e-9, atol=1e-12)
    # pixels of superpixels without points get no gradient; pixels of kept superpixels do
    assert (pixels_a.grad != 0).any() and (pixels_a.grad == 0).any()


def test_superpixel_loss_float32_matches_float64():
    points, pairing, pixels, superpixels = random_batch(3, height=16, width=20, num_pairs=200)
    loss64, _ = superpixel_infonce(points, pairing, pixels, superpixels)
    loss32, _ = superpixel_infonce(points.float(), pairing, pixels.float(), superpixels)
    assert loss32.dtype == torch.float32
    assert abs(loss32.item() - loss64.item()) < 1e-5


def test_no_superpixels_variant_equals_brute_force_with_pixel_ids():
    points, pairing, pixels, _ = random_batch(4, num_pairs=40)
    num_images, _, height, width = pixels.shape
    every_pixel_its_own = torch.arange(height * width).reshape(1, height, width).repeat(num_images, 1, 1)
    loss, stats = superpixel_infonce(points, pairing, pixels, None, num_matches=10_000)
    expected, kept = brute_superpixel_loss(points, pairing, pixels, every_pixel_its_own, TEMPERATURE)
    assert stats["superpixels"] == kept
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_no_superpixels_variant_subsamples_paired_pixels():
    points, pairing, pixels, _ = random_batch(5, height=20, width=20, num_pairs=300)
    generator = torch.Generator().manual_seed(0)
    loss, stats = superpixel_infonce(points, pairing, pixels, None, num_matches=50, generator=generator)
    assert stats["superpixels"] == 50 and torch.isfinite(loss)
    again, _ = superpixel_infonce(points, pairing, pixels, None, num_matches=50,
                                  generator=torch.Generator().manual_seed(0))
    assert again.item() == loss.item()


def test_relabelling_superpixel_ids_does_not_change_the_loss():
    points, pairing, pixels, superpixels = random_batch(6, num_labels=6)
    loss, _ = superpixel_infonce(points, pairing, pixels, superpixels)
    # a different permutation per image, and huge sparse ids (forces the relabelling path)
    generator = torch.Generator().manual_seed(1)
    relabelled = torch.empty_like(superpixels)
    for m in range(superpixels.shape[0]):
        relabelled[m] = torch.randperm(6, generator=generator)[superpixels[m]]
    sparse_ids = superpixels * 1_000_003 + 17
    for labels in (relabelled, sparse_ids):
        other, _ = superpixel_infonce(points, pairing, pixels, labels)
        torch.testing.assert_close(other, loss, rtol=1e-12, atol=1e-12)


def test_duplicating_a_scan_adds_log_2():
    """Each superpoint then also meets its own superpixel's copy as a negative, with the positive's logit, and
    every negative twice: the softmax denominator doubles, so every row's loss grows by exactly log 2."""
    points, pairing, pixels, superpixels = random_batch(7)
    loss, stats = superpixel_infonce(points, pairing, pixels, superpixels)
    num_images = pixels.shape[0]
    shifted = pairing.clone()
    shifted[:, 0] += num_images
    doubled, doubled_stats = superpixel_infonce(
        torch.cat([points, points]), torch.cat([pairing, shifted]), torch.cat([pixels, pixels]),
        torch.cat([superpixels, superpixels]),
    )
    assert doubled_stats["superpixels"] == 2 * stats["superpixels"]
    torch.testing.assert_close(doubled, loss + math.log(2), rtol=1e-12, atol=1e-12)


def test_superpixel_ids_are_per_image():
    """Label 0 of image 0 and label 0 of image 1 are two superpixels."""
    points, pairing, pixels, _ = random_batch(8, num_images=2)
    one_label_each = torch.zeros(2, pixels.shape[2], pixels.shape[3], dtype=torch.long)
    pairing[:, 0] = torch.arange(len(pairing)) % 2
    _, stats = superpixel_infonce(points, pairing, pixels, one_label_each)
    assert stats["superpixels"] == 2


@pytest.mark.parametrize("variant", ["superpixels", "none"])
def test_no_pairs_gives_a_finite_zero_that_backpropagates(variant):
    _, _, pixels, superpixels = random_batch(9)
    points = torch.zeros(0, pixels.shape[1], dtype=torch.float64, requires_grad=True)
    pixels = pixels.clone().requires_grad_()
    loss, stats = superpixel_infonce(points, torch.zeros(0, 3, dtype=torch.long), pixels,
                                     superpixels if variant == "superpixels" else None)
    assert stats["empty"] and stats["pairs"] == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.all(pixels.grad == 0)


def test_superpixel_loss_rejects_bad_shapes_and_ids():
    points, pairing, pixels, superpixels = random_batch(10)
    with pytest.raises(ValueError, match="pairing_images"):
        superpixel_infonce(points, pairing[:, :2], pixels, superpixels)
    with pytest.raises(ValueError, match="superpixels must be"):
        superpixel_infonce(points, pairing, pixels, superpixels[:, :-1])
    with pytest.raises(ValueError, match="non-negative"):
        superpixel_infonce(points, pairing, pixels, superpixels - 1)


def test_half_precision_inputs_are_averaged_in_float32():
    points, pairing, pixels, superpixels = random_batch(11, height=12, width=12, num_pairs=60)
    reference, _ = superpixel_infonce(points.float(), pairing, pixels.float(), superpixels)
    loss, _ = superpixel_infonce(points.bfloat16(), pairing, pixels.bfloat16(), superpixels)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - reference.item()) < 0.05  # bfloat16 inputs carry ~3 significant digits


def test_ppkt_loss_equals_brute_force_on_the_drawn_subset():
    generator = torch.Generator().manual_seed(0)
    points = F.normalize(torch.randn(30, 5, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    pixels = F.normalize(torch.randn(30, 5, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    loss, stats = ppkt_infonce(points, pixels, num_matches=8, generator=torch.Generator().manual_seed(3))
    chosen = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:8]
    expected = brute_info_nce([points[i] for i in chosen], [pixels[i] for i in chosen], TEMPERATURE)
    assert stats == {"pairs": 30, "matches": 8, "empty": False}
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    unused = torch.ones(30, dtype=torch.bool)
    unused[chosen] = False
    assert torch.all(points.grad[unused] == 0) and torch.all(points.grad[chosen].abs().sum(1) > 0)

    all_pairs, stats = ppkt_infonce(points, pixels, num_matches=4096)
    assert stats["matches"] == 30
    torch.testing.assert_close(all_pairs, brute_info_nce(list(points), list(pixels), TEMPERATURE))


def test_point_infonce_equals_brute_force_values_and_gradients():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    loss, stats = point_infonce(a, b, temperature=0.4)
    grad_a, grad_b = torch.autograd.grad(loss, (a, b))
    expected = brute_info_nce(list(a), list(b), 0.4)
    expected_a, expected_b = torch.autograd.grad(expected, (a, b))
    assert stats == {"matches": 7, "empty": False}
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad_a, expected_a)
    torch.testing.assert_close(grad_b, expected_b)


def test_moco_infonce_equals_brute_force_and_keys_are_constants():
    generator = torch.Generator().manual_seed(2)
    query = F.normalize(torch.randn(4, 3, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    key = F.normalize(torch.randn(4, 3, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(6, 3, generator=generator, dtype=torch.float64), dim=1)
    loss, stats = moco_infonce(query, key, queue, temperature=0.2)
    expected = 0.0
    for i in range(4):
        logits = [query[i] @ key[i] / 0.2] + [query[i] @ queue[j] / 0.2 for j in range(6)]
        expected = expected - (logits[0] - torch.logsumexp(torch.stack(logits), 0))
    expected = expected / 4
    assert stats == {"queries": 4, "negatives": 6, "empty": False}
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert key.grad is None and query.grad.abs().sum() > 0

    no_queue, _ = moco_infonce(query, key, queue[:0])
    assert no_queue.item() == 0.0  # only the positive: softmax of one logit


def test_empty_batches_of_pair_losses_are_zero_not_nan():
    empty = torch.zeros(0, 4, requires_grad=True)
    for loss, stats in (ppkt_infonce(empty, empty), point_infonce(empty, empty),
                        moco_infonce(empty, empty, torch.zeros(5, 4))):
        assert stats["empty"] and loss.item() == 0.0 and not torch.isnan(loss)
        loss.backward()
