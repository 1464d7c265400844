"""ScaLR's distillation loss (Puy et al., CVPR 2024; valeoai/ScaLR ``utils/distiller.py``), one pair at a time.

For each pair p with point feature f_p and pixel feature g_p, both L2-normalised:
``d_p = || f_p / |f_p| - g_p / |g_p| ||_2`` (the release) or ``1 - <f_p, g_p> / (|f_p| |g_p|)``; the loss is the
mean of d_p over all pairs of the batch.
"""

from __future__ import annotations

import torch


def scalr_loss(point_features, pixel_features, distance="euclidean"):
    """Mean over the pairs of the per-pair distance; torch scalars so that autograd gives reference gradients."""
    total = torch.zeros((), dtype=torch.float64)
    num_pairs, channels = point_features.shape
    for p in range(num_pairs):
        point_norm = torch.sqrt(sum(point_features[p, c] ** 2 for c in range(channels)))
        pixel_norm = torch.sqrt(sum(pixel_features[p, c] ** 2 for c in range(channels)))
        if distance == "euclidean":
            squared = sum((point_features[p, c] / point_norm - pixel_features[p, c] / pixel_norm) ** 2
                          for c in range(channels))
            total = total + torch.sqrt(squared)
        else:
            cosine = sum(point_features[p, c] * pixel_features[p, c] for c in range(channels)) / (point_norm
                                                                                                  * pixel_norm)
            total = total + 1.0 - cosine
    return total / num_pairs
