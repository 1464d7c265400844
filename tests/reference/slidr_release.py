"""Plain transcriptions of the authors' release (valeoai/SLidR) and of the paper's supplementary, as test references.

Written for the tests from the formulas of the release (no code of it is copied): each function says where its
formula comes from. numpy replaces torch and a ``numpy.random.Generator`` replaces the global generators; draws
are made in the release's order, so that slidr's functions given the same generator must give the same result.
"""

from __future__ import annotations

import math

import numpy as np


def drop_cuboids(pc: np.ndarray, pairing_points: np.ndarray, pairing_images: np.ndarray, num_images: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``utils/transforms.py`` ``DropCuboids.__call__``.

    range = max(pc) - min(pc) per axis; crop_range = random() * 0.2; half side = range * crop_range / 2; centre =
    a random point; the points strictly inside (pc < centre + half and pc > centre - half on the three axes) are
    dropped; the pairings of the kept points are re-indexed by cumsum(kept) - 1. If any of the images keeps fewer
    than 1024 pairings, the input is returned unchanged (one draw, no retry).

    Returns (kept points mask (N,), pairing_points, pairing_images) after the transform.
    """
    pc = np.asarray(pc, np.float32)
    range_xyz = pc.max(axis=0) - pc.min(axis=0)
    crop_range = rng.random() * 0.2
    new_range = range_xyz * np.float32(crop_range) / np.float32(2.0)
    sample_center = pc[rng.integers(len(pc))]
    max_xyz = sample_center + new_range
    min_xyz = sample_center - new_range
    upper_idx = np.sum((pc[:, 0:3] < max_xyz).astype(np.int32), 1) == 3
    lower_idx = np.sum((pc[:, 0:3] > min_xyz).astype(np.int32), 1) == 3
    new_pointidx = ~(upper_idx & lower_idx)
    mask = new_pointidx[pairing_points]
    cs = np.cumsum(new_pointidx) - 1
    pairing_points_out = cs[pairing_points[mask]]
    pairing_images_out = pairing_images[mask]
    successful = True
    for image in range(num_images):
        if np.sum(pairing_images_out[:, 0] == image) < 1024:
            successful = False
    if successful:
        return new_pointidx, pairing_points_out, pairing_images_out
    return np.ones(len(pc), bool), pairing_points, pairing_images


def crop_accepted(kept: int, total: int) -> bool:
    """``utils/transforms.py`` ``ResizedCrop``: a crop is kept when ``sum > 1024 or sum / len > 0.75``."""
    return kept > 1024 or (total > 0 and kept / total > 0.75)


def nuscenes_feature(points: np.ndarray) -> np.ndarray:
    """``pretrain/dataloader_nuscenes.py`` (``intensity = pc[:, 3:]``, ``unique_feats = intensity[indexes]``) and
    ``downstream/dataloader_nuscenes.py`` (``points[indexes][:, 3:]`` of ``LidarPointCloud``'s 4 rows): the stored
    intensity, unchanged. (N, 4) -> (N, 1)."""
    return np.asarray(points, np.float32)[:, 3:4]


def semantickitti_feature(points: np.ndarray) -> np.ndarray:
    """``downstream/dataloader_kitti.py``: ``points[indexes][:, 3:] + 1.`` (remission + 1). (N, 4) -> (N, 1)."""
    return np.asarray(points, np.float32)[:, 3:] + 1.0


# Supplementary D.1 (linear probing: 50 epochs) and D.3 (annotation efficiency: 100 epochs with 1% of the labels,
# 50 epochs with 5, 10, 25 and 100%), as a table.
PAPER_EPOCHS = {("probe", 1.0): 50, ("finetune", 0.01): 100, ("finetune", 0.05): 50, ("finetune", 0.1): 50,
                ("finetune", 0.25): 50, ("finetune", 1.0): 50}

# ``config/semseg_nuscenes.yaml`` / ``config/semseg_kitti.yaml``: ``dataset_skip_step`` of each label fraction.
SKIP_STEP = {0.01: 100, 0.05: 20, 0.1: 10, 0.25: 4, 1.0: 1}


def pointcontrast_iterations(slidr_scans: int, batch_pairs: int, slidr_epochs: int = 50) -> int:
    """Supplementary (PointContrast†): the number of point-cloud pairs equals the number of point clouds SLidR sees
    in ``slidr_epochs`` epochs of its ``slidr_scans`` scans; ``batch_pairs`` pairs per iteration."""
    pairs = slidr_epochs * slidr_scans
    return math.ceil(pairs / batch_pairs)


def res16unet_batch_norm_momenta(bn_momentum: float, blocks: tuple[int, ...] = (2, 3, 4, 6, 2, 2, 2, 2),
                                 block_widths: tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96),
                                 stem: int = 32) -> dict[str, list[float]]:
    """``model/res16unet.py`` (Res16UNet34C) with ``model/resnet.py`` ``_make_layer`` and
    ``model/modules/resnet_block.py`` ``BasicBlockBase``: the momentum of each batch norm, by kind.

    ``bn0``-``bn4`` and ``bntr4``-``bntr7`` take ``bn_momentum``; ``_make_layer`` passes it to the shortcut's batch
    norm (built when the block's input width differs from its output width, or stride != 1) but not to the blocks,
    whose ``norm1`` / ``norm2`` keep ``BasicBlockBase``'s default 0.1.
    """
    layers = {"outside": [bn_momentum] * 9, "shortcut": [], "block": []}
    w = block_widths  # PLANES; a decoder stage reads its transposed conv's output (its own width) + the skip
    inputs = [stem, w[0], w[1], w[2], w[4] + w[2], w[5] + w[1], w[6] + w[0], w[7] + stem]
    for count, width, inplanes in zip(blocks, block_widths, inputs):
        if inplanes != width:
            layers["shortcut"].append(bn_momentum)
        layers["block"] += [0.1, 0.1] * count
    return layers


def minkowski_init_bound(in_channels: int, out_channels: int, kernel_volume: int, transposed: bool) -> float:
    """MinkowskiEngine's ``MinkowskiConvolutionBase.reset_parameters(is_transpose)``, which the release's
    ``conv`` / ``conv_tr`` layers use: weights uniform in +-1/sqrt(n), n = (out_channels if is_transpose else
    in_channels) * kernel_volume; ``MinkowskiConvolutionTranspose`` calls it with is_transpose=True."""
    return 1.0 / math.sqrt((out_channels if transposed else in_channels) * kernel_volume)
