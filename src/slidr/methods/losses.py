"""Contrastive losses of the pretraining methods: pure functions on torch tensors.

Every loss returns ``(loss, stats)``: ``loss`` is a scalar tensor, ``stats`` a dict of plain Python numbers
(how many pairs / superpixels / matches were used) for logging.

Empty batches. When a batch has nothing to contrast (no point-pixel pairs, no matches), the loss is an exact
zero that is still connected to the autograd graph of the inputs (so ``backward()`` works and, under DDP, every
rank runs the same collective operations) and ``stats["empty"]`` is ``True``; the trainer counts and skips such
batches. It is never NaN.

Precision. Half-precision inputs (mixed precision) are promoted to float32 before averaging: a superpixel can
hold tens of thousands of pixels, beyond what float16 sums represent.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Stats = dict[str, float | int | bool]

_PARTIAL_SUMS = 4


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between row-aligned embeddings: row i of ``positives`` is the positive of row i of ``anchors``.

    Parameters
    ----------
    anchors, positives : (N, C) tensors
        Embeddings; every other row of ``positives`` is a negative of an anchor.
    temperature : float
        Logits are the dot products divided by this.

    Returns
    -------
    loss : scalar tensor
        Mean over the anchors of ``-log softmax(anchors @ positives.T / temperature)[i, i]``.
    """
    logits = anchors @ positives.transpose(0, 1) / temperature
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, target)


def superpixel_infonce(
    point_features: torch.Tensor,
    pairing_images: torch.Tensor,
    pixel_features: torch.Tensor,
    superpixels: Optional[torch.Tensor],
    temperature: float = 0.07,
    renormalize: bool = False,
    num_matches: int = 4096,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, Stats]:
    """SLidR's superpixel-driven InfoNCE between superpoints and superpixels.

    For every superpixel of every image of the batch that receives at least one point, the superpoint feature is
    the mean of the features of the points projecting into it and the superpixel feature is the mean of the
    features of ALL its pixels. Superpixels receiving no point are dropped. The positive of a superpoint is its
    own superpixel; the negatives are all other kept superpixels of the batch (across images and scans).

    The means are computed with scatter operations over the pixels (no one-hot matrix): extra memory is a few
    values per superpixel and channel, plus the gradient of ``pixel_features`` in backward, written directly in
    its (M, C, H, W) layout. Superpixel ids may be any non-negative integers; they are relabelled to contiguous
    ids per batch, so the loss does not depend on how they are numbered.

    Parameters
    ----------
    point_features : (P, C) tensor
        3D features of the paired points, one row per pair (``output[pairing_points]``; a point seen by two
        cameras appears twice). The heads L2-normalise them; the means are not re-normalised by default.
    pairing_images : (P, 3) int64 tensor
        ``[image index in the batch, row, column]`` of each pair.
    pixel_features : (M, C, H, W) tensor
        Image-head features of the M images of the batch at full resolution.
    superpixels : (M, H, W) int64 tensor or None
        Superpixel id of every pixel (ids are per image: equal ids in two images are two superpixels). ``None``
        selects the "no superpixels" ablation: every pixel is its own superpixel; as a batch then has as many
        superpixels as paired pixels, a random subset of ``num_matches`` of them is used.
    temperature : float
        InfoNCE temperature (paper: 0.07).
    renormalize : bool
        L2-normalise the superpoint and superpixel means before the dot products. The authors' release does not
        (default False): it averages normalised features as they are.
    num_matches : int
        Number of paired pixels drawn when ``superpixels`` is None; unused otherwise.
    generator : torch.Generator, optional
        Random source of that draw (on ``point_features.device`` or the CPU).

    Returns
    -------
    loss : scalar tensor
        Zero (still attached to the inputs' graph) when there is no pair.
    stats : dict
        ``pairs`` (P), ``superpixels`` (superpixels used = InfoNCE rows), ``empty``.
    """
    num_pairs, channels = _check_pairs(point_features, pairing_images, "point_features")
    if pixel_features.dim() != 4 or pixel_features.shape[1] != channels:
        raise ValueError(f"pixel_features must be (M, {channels}, H, W), got {tuple(pixel_features.shape)}")
    num_images, _, height, width = pixel_features.shape
    if superpixels is not None and superpixels.shape != (num_images, height, width):
        raise ValueError(f"superpixels must be {(num_images, height, width)}, got {tuple(superpixels.shape)}")
    if num_pairs == 0:
        return _zero_loss(point_features, pixel_features), {"pairs": 0, "superpixels": 0, "empty": True}

    superpoints, superpixel_means = superpixel_embeddings(point_features, pairing_images, pixel_features,
                                                          superpixels, renormalize, num_matches, generator)
    loss = info_nce(superpoints, superpixel_means, temperature)
    return loss, {"pairs": num_pairs, "superpixels": superpoints.shape[0], "empty": False}


def superpixel_embeddings(
    point_features: torch.Tensor,
    pairing_images: torch.Tensor,
    pixel_features: torch.Tensor,
    superpixels: Optional[torch.Tensor],
    renormalize: bool = False,
    num_matches: int = 4096,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The row-aligned (superpoint, superpixel) means that :func:`superpixel_infonce` contrasts.

    For a trainer that gathers negatives across processes before the InfoNCE. Parameters as
    :func:`superpixel_infonce` (P must be > 0).

    Returns
    -------
    superpoints, superpixel_means : (K, C) float tensors
        Row k of each belongs to the k-th kept superpixel (superpixels sorted by image, then id).
    """
    point_features = _float32_at_least(point_features)
    pixel_features = _float32_at_least(pixel_features)
    image, row, col = pairing_images.to(device=point_features.device, dtype=torch.long).unbind(1)
    if superpixels is None:
        superpoints, superpixel_means = _pixel_as_superpixel_means(
            point_features, image, row, col, pixel_features, num_matches, generator
        )
    else:
        superpoints, superpixel_means = _superpixel_means(point_features, image, row, col, pixel_features,
                                                          superpixels.to(point_features.device))
    if renormalize:
        superpoints = F.normalize(superpoints, dim=1)
        superpixel_means = F.normalize(superpixel_means, dim=1)
    return superpoints, superpixel_means


def _superpixel_means(point_features, image, row, col, pixel_features, superpixels):
    """(K, C) superpoint and superpixel means of the K superpixels that receive points."""
    num_images, channels, height, width = pixel_features.shape
    labels = superpixels.reshape(num_images, height * width).long()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("superpixel ids must be non-negative")
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    if num_labels > height * width:
        # sparse ids (e.g. hashed): relabel so that the per-image tables stay as small as the images
        _, labels = torch.unique(labels, return_inverse=True)
        num_labels = int(labels.max()) + 1
    pair_ids = image * num_labels + labels[image, row * width + col]
    point_counts = torch.bincount(pair_ids, minlength=num_images * num_labels)
    kept = torch.nonzero(point_counts).squeeze(1)  # sorted global ids: contiguous relabelling 0..K-1
    relabel = torch.full_like(point_counts, -1)
    relabel[kept] = torch.arange(kept.numel(), device=kept.device)
    pair_superpixel = relabel[pair_ids]

    sums = point_features.new_zeros(kept.numel(), channels).index_add_(0, pair_superpixel, point_features)
    superpoints = sums / point_counts[kept].unsqueeze(1).to(sums.dtype)

    # One scatter over the pixels in their (M, C, H*W) layout: the index is broadcast over the channels (a
    # stride-0 view), so nothing of size pixels x channels is allocated; backward is the matching gather.
    # Neighbouring pixels mostly share a superpixel: each superpixel gets _PARTIAL_SUMS accumulators, used in
    # turn by consecutive pixels, so that the additions do not wait on each other (and GPU atomics spread out).
    partial = labels * _PARTIAL_SUMS
    partial += torch.arange(height * width, device=labels.device) % _PARTIAL_SUMS
    num_slots = num_labels * _PARTIAL_SUMS
    flat_pixels = pixel_features.reshape(num_images, channels, height * width)
    pixel_sums = torch.scatter_add(
        flat_pixels.new_zeros(num_images, channels, num_slots),
        2,
        partial.unsqueeze(1).expand(num_images, channels, height * width),
        flat_pixels,
    ).reshape(num_images, channels, num_labels, _PARTIAL_SUMS).sum(dim=3)
    pixel_counts = torch.zeros(num_images, num_slots, device=labels.device, dtype=torch.float32)
    pixel_counts.scatter_add_(1, partial, pixel_counts.new_ones(1, 1).expand_as(partial))
    pixel_counts = pixel_counts.reshape(num_images, num_labels, _PARTIAL_SUMS).sum(dim=2)
    kept_image, kept_label = kept // num_labels, kept % num_labels
    superpixel_means = pixel_sums[kept_image, :, kept_label] / pixel_counts[kept_image, kept_label].unsqueeze(1)
    return superpoints, superpixel_means


def _pixel_as_superpixel_means(point_features, image, row, col, pixel_features, num_matches, generator):
    """The "no superpixels" variant: a random subset of the paired pixels, each averaging its points."""
    _, channels, height, width = pixel_features.shape
    pixel_ids = (image * height + row) * width + col
    unique_pixels, pair_pixel = torch.unique(pixel_ids, return_inverse=True)
    num_pixels = unique_pixels.numel()
    chosen = _random_subset(num_pixels, num_matches, generator, pixel_ids.device)
    slot = torch.full((num_pixels,), -1, dtype=torch.long, device=pixel_ids.device)
    slot[chosen] = torch.arange(chosen.numel(), device=pixel_ids.device)
    pair_slot = slot[pair_pixel]
    used = pair_slot >= 0
    pair_slot = pair_slot[used]
    sums = point_features.new_zeros(chosen.numel(), channels).index_add_(0, pair_slot, point_features[used])
    counts = torch.bincount(pair_slot, minlength=chosen.numel())
    superpoints = sums / counts.unsqueeze(1).to(sums.dtype)
    chosen_ids = unique_pixels[chosen]
    chosen_col = chosen_ids % width
    chosen_row = (chosen_ids // width) % height
    chosen_image = chosen_ids // (width * height)
    return superpoints, pixel_features[chosen_image, :, chosen_row, chosen_col]


def ppkt_infonce(
    point_features: torch.Tensor,
    pixel_features_at_pairs: torch.Tensor,
    num_matches: int = 4096,
    temperature: float = 0.07,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, Stats]:
    """PPKT's point-to-pixel InfoNCE on a random subset of the pairs of the whole batch.

    Parameters
    ----------
    point_features : (P, C) tensor
        3D features of the paired points, one row per pair.
    pixel_features_at_pairs : (P, C) tensor
        Image features at the paired pixels, row-aligned with ``point_features``.
    num_matches : int
        Pairs drawn without replacement (all of them when P is smaller), across all scans of the batch.
    temperature : float
        InfoNCE temperature.
    generator : torch.Generator, optional
        Random source of the draw.

    Returns
    -------
    loss : scalar tensor
    stats : dict
        ``pairs`` (P), ``matches`` (pairs used), ``empty``.
    """
    num_pairs, _ = _check_aligned(point_features, pixel_features_at_pairs)
    if num_pairs == 0:
        return _zero_loss(point_features, pixel_features_at_pairs), {"pairs": 0, "matches": 0, "empty": True}
    chosen = _random_subset(num_pairs, num_matches, generator, point_features.device)
    loss = info_nce(point_features[chosen], pixel_features_at_pairs[chosen], temperature)
    return loss, {"pairs": num_pairs, "matches": chosen.numel(), "empty": False}


def point_infonce(
    features_a: torch.Tensor, features_b: torch.Tensor, temperature: float = 0.07
) -> tuple[torch.Tensor, Stats]:
    """PointContrast's PointInfoNCE on matched points of two views.

    Parameters
    ----------
    features_a, features_b : (M, C) tensors
        Features of the matched points in view a and view b (row i of each is the same physical point); every
        other matched point of view b is a negative. Subsample the matches before calling (PointContrast: 4,096).
    temperature : float
        InfoNCE temperature.

    Returns
    -------
    loss : scalar tensor
    stats : dict
        ``matches`` (M), ``empty``.
    """
    num_matches, _ = _check_aligned(features_a, features_b)
    if num_matches == 0:
        return _zero_loss(features_a, features_b), {"matches": 0, "empty": True}
    return info_nce(features_a, features_b, temperature), {"matches": num_matches, "empty": False}


def moco_infonce(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07
) -> tuple[torch.Tensor, Stats]:
    """MoCo's InfoNCE with a queue of negatives (DepthContrast's global-embedding loss).

    Parameters
    ----------
    query : (B, C) tensor
        Embeddings of the online encoder (L2-normalised by the caller).
    key : (B, C) tensor
        Embeddings of the momentum encoder for the same samples: row i is the positive of query i. Treated as a
        constant (detached), as in MoCo.
    queue : (K, C) tensor
        Negatives from earlier batches (constant; K may be 0).
    temperature : float
        InfoNCE temperature.

    Returns
    -------
    loss : scalar tensor
        Mean over the queries of ``-log softmax([q.k, q.queue]) / temperature)[0]``.
    stats : dict
        ``queries`` (B), ``negatives`` (K), ``empty``.
    """
    batch, channels = _check_aligned(query, key)
    if queue.dim() != 2 or queue.shape[1] != channels:
        raise ValueError(f"queue must be (K, {channels}), got {tuple(queue.shape)}")
    stats: Stats = {"queries": batch, "negatives": queue.shape[0], "empty": batch == 0}
    if batch == 0:
        return _zero_loss(query), stats
    positive = (query * key.detach()).sum(dim=1, keepdim=True)
    negatives = query @ queue.detach().to(query.dtype).transpose(0, 1)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    target = torch.zeros(batch, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target), stats


def _random_subset(total: int, size: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """``min(size, total)`` distinct indices below ``total``, drawn on the generator's device."""
    if size <= 0:
        raise ValueError(f"num_matches must be > 0, got {size}")
    if size >= total:
        return torch.arange(total, device=device)
    draw_device = generator.device if generator is not None else device
    return torch.randperm(total, generator=generator, device=draw_device)[:size].to(device)


def _zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """An exact 0 connected to every input that requires grad (reads one element of each)."""
    zero = tensors[0].new_zeros((), dtype=torch.float32)
    for tensor in tensors:
        zero = zero + tensor.reshape(-1)[:1].float().sum() * 0.0
    return zero


def _float32_at_least(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _check_pairs(point_features: torch.Tensor, pairing_images: torch.Tensor, name: str) -> tuple[int, int]:
    if point_features.dim() != 2:
        raise ValueError(f"{name} must be (P, C), got {tuple(point_features.shape)}")
    if pairing_images.dim() != 2 or pairing_images.shape != (point_features.shape[0], 3):
        raise ValueError(
            f"pairing_images must be ({point_features.shape[0]}, 3) [image, row, col], "
            f"got {tuple(pairing_images.shape)}"
        )
    return point_features.shape[0], point_features.shape[1]


def _check_aligned(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (N, C) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.shape[0], a.shape[1]
