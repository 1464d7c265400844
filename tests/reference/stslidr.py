"""ST-SLidR's loss (Mahmoud et al., CVPR 2023), transcribed from the authors' release TRAILab/ST-SLidR
(``pretrain/lightning_trainer.py``: ``get_k_q``, ``get_superpixel_features``, ``get_superpixel_cosine_similarity``,
``loss_superpixel_stslidr_classbalance``, ``get_anchor_weights``, ``get_votes``; ``pretrain/criterion.py``:
``NCELoss``) with plain loops over superpixels, cells and pairs.

1. Superpoint f_s = mean of the features of the points paired with a pixel of superpixel s; superpixel
   embedding g_s = mean of the image-head features over all pixels of s. Superpixels without points are dropped.
2. Teacher feature t_s = mean of the frozen encoder's features over the cells (i, j) of its (h, w) map whose
   nearest-neighbour pixel (i H // h, j W // w) belongs to s; superpixels with no such cell (or a zero mean) are
   dropped.
3. S_ij = cos(t_i, t_j) over all kept superpixels of the batch.
4. Negative weights: w_ij = 1 - clip(S_ij, 0, 1); with quantiles active (min > 0 or max < 1), each row keeps
   w_ij = 1 where quantile_min(row) <= w_ij <= quantile_max(row) and w_ij != 0, else 0 (quantiles by linear
   interpolation between order statistics, the row including its diagonal); w_ii = 1.
5. l_i = -log( exp(w_ii <f_i, g_i> / tau) / sum_j exp(w_ij <f_i, g_j> / tau) ).
6. Class balance: votes_i = sum_j S_ij [S_ij >= threshold]; v = votes - min(votes); a_i = 1 - v_i / max(v)
   (all 1 when max(v) = 0); loss = sum_i a_i l_i / sum_i a_i (else the mean of l_i).
"""

from __future__ import annotations

import math

import torch


def linear_quantile(values, q):
    """The q quantile of a list of floats, linear interpolation between order statistics."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def stslidr_loss(point_features, pairing_images, pixel_features, superpixels, teacher_features, temperature,
                 min_quantile=0.01, max_quantile=1.0, class_balance=True, threshold=0.5):
    """Returns (loss as a torch scalar, number of superpixels used, number dropped for lack of teacher feature)."""
    num_images, channels, height, width = pixel_features.shape
    _, teacher_channels, teacher_height, teacher_width = teacher_features.shape
    superpoints, embeddings, teachers = [], [], []
    unseen = 0
    for m in range(num_images):
        for label in sorted({int(v) for v in superpixels[m].flatten()}):
            pairs = [p for p in range(len(pairing_images))
                     if int(pairing_images[p][0]) == m
                     and int(superpixels[m][int(pairing_images[p][1])][int(pairing_images[p][2])]) == label]
            if not pairs:
                continue
            cells = [(i, j) for i in range(teacher_height) for j in range(teacher_width)
                     if int(superpixels[m][i * height // teacher_height][j * width // teacher_width]) == label]
            teacher = [sum(float(teacher_features[m, d, i, j]) for i, j in cells) / len(cells) if cells else 0.0
                       for d in range(teacher_channels)]
            if not any(value != 0.0 for value in teacher):
                unseen += 1
                continue
            pixels = [(r, c) for r in range(height) for c in range(width) if int(superpixels[m][r][c]) == label]
            superpoints.append(sum(point_features[p] for p in pairs) / len(pairs))
            embeddings.append(sum(pixel_features[m, :, r, c] for r, c in pixels) / len(pixels))
            teachers.append(teacher)
    count = len(superpoints)
    if count == 0:
        return None, 0, unseen

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    similarity = [[cosine(teachers[i], teachers[j]) for j in range(count)] for i in range(count)]
    weights = [[1.0 - min(max(similarity[i][j], 0.0), 1.0) for j in range(count)] for i in range(count)]
    if min_quantile > 0.0 or max_quantile < 1.0:
        for i in range(count):
            low = linear_quantile(weights[i], min_quantile)
            high = linear_quantile(weights[i], max_quantile)
            weights[i] = [1.0 if (low <= value <= high and value != 0.0) else 0.0 for value in weights[i]]
    for i in range(count):
        weights[i][i] = 1.0

    per_anchor = []
    for i in range(count):
        logits = [weights[i][j] * sum(superpoints[i][c] * embeddings[j][c] for c in range(channels)) / temperature
                  for j in range(count)]
        per_anchor.append(torch.logsumexp(torch.stack(logits), 0) - logits[i])

    if not class_balance:
        return sum(per_anchor) / count, count, unseen
    votes = [sum(value for value in similarity[i] if value >= threshold) for i in range(count)]
    lowest = min(votes)
    votes = [value - lowest for value in votes]
    highest = max(votes)
    anchor_weights = [1.0 - value / highest for value in votes] if highest > 0 else [1.0] * count
    return sum(a * value for a, value in zip(anchor_weights, per_anchor)) / sum(anchor_weights), count, unseen
