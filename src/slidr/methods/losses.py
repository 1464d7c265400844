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

import math
from typing import Literal, NamedTuple, Optional

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
        superpoints, superpixel_means, _ = _superpixel_means(point_features, image, row, col, pixel_features,
                                                             superpixels.to(point_features.device))
    if renormalize:
        superpoints = F.normalize(superpoints, dim=1)
        superpixel_means = F.normalize(superpixel_means, dim=1)
    return superpoints, superpixel_means


def _superpixel_means(point_features, image, row, col, pixel_features, superpixels):
    """(K, C) superpoint and superpixel means of the K superpixels that receive points, and their pooling."""
    num_images, channels, height, width = pixel_features.shape
    pooling = _superpixel_pooling(image, row * width + col, superpixels.reshape(num_images, height * width).long())
    sums = point_features.new_zeros(pooling.kept_image.numel(), channels).index_add_(0, pooling.pair_superpixel,
                                                                                   point_features)
    superpoints = sums / pooling.point_counts.unsqueeze(1).to(sums.dtype)
    pixel_sums, pixel_counts = _per_label_sums(pixel_features.reshape(num_images, channels, height * width),
                                               pooling.labels, pooling.num_labels)
    superpixel_means = (pixel_sums[pooling.kept_image, :, pooling.kept_label]
                        / pixel_counts[pooling.kept_image, pooling.kept_label].unsqueeze(1))
    return superpoints, superpixel_means, pooling


class _Pooling(NamedTuple):
    """Which superpixels of a batch receive points, and the row of each pair's superpixel among them."""

    labels: torch.Tensor  # (M, H*W) superpixel ids, relabelled below num_labels when they were sparse
    num_labels: int
    pair_superpixel: torch.Tensor  # (P,) row 0..K-1 of each pair's superpixel among the kept ones
    point_counts: torch.Tensor  # (K,) pairs per kept superpixel
    kept_image: torch.Tensor  # (K,) image of each kept superpixel
    kept_label: torch.Tensor  # (K,) its id in ``labels``


def _superpixel_pooling(image: torch.Tensor, pixel: torch.Tensor, labels: torch.Tensor) -> _Pooling:
    """Kept superpixels (those with at least one pair), sorted by image then id.

    ``image``, ``pixel`` (P,): image and flat pixel index (row * W + col) of each pair; ``labels`` (M, H*W).
    """
    num_images, num_pixels = labels.shape
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("superpixel ids must be non-negative")
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    if num_labels > num_pixels:
        # sparse ids (e.g. hashed): relabel so that the per-image tables stay as small as the images
        _, labels = torch.unique(labels, return_inverse=True)
        num_labels = int(labels.max()) + 1
    pair_ids = image * num_labels + labels[image, pixel]
    point_counts = torch.bincount(pair_ids, minlength=num_images * num_labels)
    kept = torch.nonzero(point_counts).squeeze(1)  # sorted global ids: contiguous relabelling 0..K-1
    relabel = torch.full_like(point_counts, -1)
    relabel[kept] = torch.arange(kept.numel(), device=kept.device)
    return _Pooling(labels, num_labels, relabel[pair_ids], point_counts[kept], kept // num_labels,
                    kept % num_labels)


def _per_label_sums(features: torch.Tensor, labels: torch.Tensor, num_labels: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sums (M, C, L) and counts (M, L) of the features (M, C, N) of the N pixels of each label (M, N).

    One scatter over the pixels in their (M, C, N) layout: the index is broadcast over the channels (a stride-0
    view), so nothing of size pixels x channels is allocated; backward is the matching gather. Neighbouring pixels
    mostly share a superpixel: each superpixel gets _PARTIAL_SUMS accumulators, used in turn by consecutive
    pixels, so that the additions do not wait on each other (and GPU atomics spread out).
    """
    num_images, channels, num_pixels = features.shape
    partial = labels * _PARTIAL_SUMS
    partial += torch.arange(num_pixels, device=labels.device) % _PARTIAL_SUMS
    num_slots = num_labels * _PARTIAL_SUMS
    sums = torch.scatter_add(
        features.new_zeros(num_images, channels, num_slots),
        2,
        partial.unsqueeze(1).expand(num_images, channels, num_pixels),
        features,
    ).reshape(num_images, channels, num_labels, _PARTIAL_SUMS).sum(dim=3)
    counts = torch.zeros(num_images, num_slots, device=labels.device, dtype=torch.float32)
    counts.scatter_add_(1, partial, counts.new_ones(1, 1).expand_as(partial))
    return sums, counts.reshape(num_images, num_labels, _PARTIAL_SUMS).sum(dim=2)


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


# --------------------------------------------------------------------------------------------------------------
# Successors of SLidR: ScaLR's cosine distillation, ST-SLidR's semantically tolerant superpixel InfoNCE.
# --------------------------------------------------------------------------------------------------------------


def features_at_pixels(pixel_features: torch.Tensor, pairing_images: torch.Tensor) -> torch.Tensor:
    """The feature of the paired pixel of every pair.

    Parameters
    ----------
    pixel_features : (M, C, H, W) tensor
        Feature maps of the M images of the batch, at the resolution the pairing refers to.
    pairing_images : (P, 3) int64 tensor
        ``[image index in the batch, row, column]`` of each pair.

    Returns
    -------
    (P, C) tensor, row-aligned with ``pairing_images``.
    """
    if pixel_features.dim() != 4:
        raise ValueError(f"pixel_features must be (M, C, H, W), got {tuple(pixel_features.shape)}")
    if pairing_images.dim() != 2 or pairing_images.shape[1] != 3:
        raise ValueError(f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}")
    image, row, col = pairing_images.to(device=pixel_features.device, dtype=torch.long).unbind(1)
    return pixel_features[image, :, row, col]


def cosine_distillation(
    point_features: torch.Tensor,
    pixel_features_at_pairs: torch.Tensor,
    distance: Literal["euclidean", "cosine"] = "euclidean",
) -> tuple[torch.Tensor, Stats]:
    """ScaLR's distillation loss: each point's feature regressed onto its pixel's feature, both L2-normalised.

    No negatives: the loss of a pair does not depend on the rest of the batch. With ``k`` and ``q`` the
    L2-normalised point and pixel features of a pair, the per-pair distance is ``||k - q||`` (``"euclidean"``,
    ScaLR's release: ``torch.norm(k - q, dim=1).mean()``), which equals ``sqrt(2 - 2 cos)``, or ``1 - cos``
    (``"cosine"``). Both are 0 for parallel and 2 for opposite features. The loss is the mean over all the pairs
    of the batch (pooled across scans, as ScaLR concatenates the pairs of its batch before the mean).

    Parameters
    ----------
    point_features : (P, C) tensor
        3D features of the paired points after the projection head (one row per pair).
    pixel_features_at_pairs : (P, C) tensor
        Teacher features at the paired pixels (:func:`features_at_pixels`), row-aligned. In ScaLR they come from
        a frozen teacher, so they are constants; gradients flow to whichever input requires them.
    distance : ``"euclidean"`` or ``"cosine"``
        See above; ScaLR's release uses ``"euclidean"``.

    Returns
    -------
    loss : scalar tensor
        Zero (still attached to the inputs' graph) when there is no pair.
    stats : dict
        ``pairs`` (P), ``cosine`` (mean cosine similarity of the pairs, for logging), ``empty``.
    """
    num_pairs, _ = _check_aligned(point_features, pixel_features_at_pairs)
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    if num_pairs == 0:
        return _zero_loss(point_features, pixel_features_at_pairs), {"pairs": 0, "cosine": 0.0, "empty": True}
    points = F.normalize(_float32_at_least(point_features), dim=1)
    pixels = F.normalize(_float32_at_least(pixel_features_at_pairs), dim=1)
    cosine = (points * pixels).sum(dim=1)
    if distance == "euclidean":
        # the norm of the difference, not sqrt(2 - 2 cos): its gradient stays finite when the two coincide
        per_pair = torch.linalg.vector_norm(points - pixels, dim=1)
    else:
        per_pair = 1.0 - cosine
    return per_pair.mean(), {"pairs": num_pairs, "cosine": float(cosine.detach().mean()), "empty": False}


def semantically_tolerant_infonce(
    point_features: torch.Tensor,
    pairing_images: torch.Tensor,
    pixel_features: torch.Tensor,
    superpixels: torch.Tensor,
    teacher_features: torch.Tensor,
    temperature: float = 0.07,
    min_quantile: float = 0.01,
    max_quantile: float = 1.0,
    class_balance: bool = True,
    balance_threshold: float = 0.5,
    renormalize: bool = False,
) -> tuple[torch.Tensor, Stats]:
    """ST-SLidR's semantically tolerant superpixel InfoNCE, with its class-agnostic balancing.

    The superpoints and superpixels are SLidR's (:func:`superpixel_infonce`: superpixels receiving no point are
    dropped). Each kept superpixel also gets a *teacher* feature: the mean of ``teacher_features`` over its cells
    once the superpixel map is brought to the teacher's resolution by nearest neighbour (cell ``(i, j)`` of an
    ``h x w`` map reads pixel ``(floor(i H / h), floor(j W / w))``). Superpixels without teacher feature (no cell
    left at that resolution, or all-zero features) are dropped as well. ``S`` (K, K) is the cosine similarity of
    the teacher features of all kept superpixels of the batch; it is a constant (no gradient).

    * Negative weights ``w`` (:func:`semantic_tolerance_weights`) multiply the logits:
      ``logit_ij = w_ij <k_i, q_j> / temperature``; ``w_ii = 1``.
    * Per-anchor InfoNCE ``l_i = -log softmax_j(logit_ij)[i]``.
    * Class-agnostic balancing (:func:`class_balance_weights`): ``loss = sum_i a_i l_i / sum_i a_i``; without it,
      the mean of ``l_i``.

    This transcribes the authors' release (TRAILab/ST-SLidR, ``pretrain/lightning_trainer.py``,
    ``loss_superpixel_stslidr_classbalance``), including its weighting of the logits rather than of their
    exponentials: a dropped negative has logit 0, i.e. still adds ``exp(0) = 1`` to the denominator.

    Parameters
    ----------
    point_features : (P, C) tensor
        3D features of the paired points, one row per pair.
    pairing_images : (P, 3) int64 tensor
        ``[image index in the batch, row, column]`` of each pair.
    pixel_features : (M, C, H, W) tensor
        Image-head features (the student's 2D side, as SLidR's).
    superpixels : (M, H, W) int64 tensor
        Superpixel id of every pixel (ids are per image).
    teacher_features : (M, D, h, w) tensor
        Features of the frozen pretrained image encoder (before any trainable head), at their own resolution
        ``h <= H``, ``w <= W`` (ST-SLidR: the encoder's output map).
    temperature : float
        InfoNCE temperature (ST-SLidR: 0.07).
    min_quantile, max_quantile : float
        Per-anchor quantiles of ``1 - S`` outside which negatives get weight 0 (ST-SLidR: 0.01 and 1.0, i.e. the
        1% most similar negatives of each anchor are dropped). ``0`` and ``1`` select the soft weights ``1 - S``.
    class_balance : bool
        Weight the anchors by :func:`class_balance_weights` (ST-SLidR's full method; its ``stslidr_*`` configs
        without ``classbalance`` set it off).
    balance_threshold : float
        Similarities below it count as noise in the balancing votes (ST-SLidR: 0.5).
    renormalize : bool
        L2-normalise the superpoint and superpixel means (as :func:`superpixel_infonce`; release: False).

    Returns
    -------
    loss : scalar tensor
        Zero (still attached to the inputs' graph) when no superpixel is left.
    stats : dict
        ``pairs`` (P), ``superpixels`` (InfoNCE rows), ``unseen_by_teacher`` (superpixels with points dropped
        for lack of a teacher feature), ``dropped_negatives`` (mean per anchor of negatives of weight 0),
        ``empty``.
    """
    num_pairs = _check_tolerant_inputs(point_features, pairing_images, pixel_features, superpixels,
                                       teacher_features)
    if not 0.0 <= min_quantile <= max_quantile <= 1.0:
        raise ValueError(f"need 0 <= min_quantile <= max_quantile <= 1, got {min_quantile}, {max_quantile}")
    empty_stats: Stats = {"pairs": num_pairs, "superpixels": 0, "unseen_by_teacher": 0, "dropped_negatives": 0.0,
                          "empty": True}
    if num_pairs == 0:
        return _zero_loss(point_features, pixel_features), empty_stats
    embeddings = _tolerant_embeddings(point_features, pairing_images, pixel_features, superpixels, teacher_features,
                                      renormalize)
    num_kept = embeddings.superpoints.shape[0]
    if num_kept == 0:
        return _zero_loss(point_features, pixel_features), {**empty_stats, "unseen_by_teacher": embeddings.unseen}
    similarity = embeddings.teacher @ embeddings.teacher.transpose(0, 1)
    loss, stats = tolerant_info_nce(embeddings.superpoints, embeddings.superpixels, similarity, temperature,
                                    min_quantile, max_quantile, class_balance, balance_threshold)
    return loss, {"pairs": num_pairs, "superpixels": num_kept, "unseen_by_teacher": embeddings.unseen,
                  "dropped_negatives": stats["dropped_negatives"], "empty": False}


class TolerantEmbeddings(NamedTuple):
    """The superpixels ST-SLidR contrasts, row-aligned (K = superpixels with points and a teacher feature)."""

    superpoints: torch.Tensor  # (K, C) mean point feature
    superpixels: torch.Tensor  # (K, C) mean image-head feature
    teacher: torch.Tensor  # (K, D) L2-normalised mean teacher feature, without gradient
    unseen: int  # superpixels with points dropped for lack of a teacher feature


def tolerant_superpixel_embeddings(
    point_features: torch.Tensor,
    pairing_images: torch.Tensor,
    pixel_features: torch.Tensor,
    superpixels: torch.Tensor,
    teacher_features: torch.Tensor,
    renormalize: bool = False,
) -> TolerantEmbeddings:
    """The superpoint, superpixel and teacher embeddings of :func:`semantically_tolerant_infonce`.

    For a trainer that gathers them across processes before :func:`tolerant_info_nce`. Parameters as
    :func:`semantically_tolerant_infonce`; with no pair, K = 0.

    Returns
    -------
    TolerantEmbeddings
        Rows sorted by image, then superpixel id.
    """
    _check_tolerant_inputs(point_features, pairing_images, pixel_features, superpixels, teacher_features)
    return _tolerant_embeddings(point_features, pairing_images, pixel_features, superpixels, teacher_features,
                                renormalize)


def tolerant_info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    similarity: torch.Tensor,
    temperature: float = 0.07,
    min_quantile: float = 0.01,
    max_quantile: float = 1.0,
    class_balance: bool = True,
    balance_threshold: float = 0.5,
    offset: int = 0,
) -> tuple[torch.Tensor, Stats]:
    """ST-SLidR's weighted InfoNCE and class balance on given embeddings: anchors ``offset .. offset + K - 1`` of
    N superpixels.

    With every superpixel an anchor (``offset`` = 0, K = N) this is the loss of
    :func:`semantically_tolerant_infonce`. Otherwise it is these anchors' share of it: ``sum_i a_i l_i /
    sum_j a_j`` with ``i`` over the K anchors and ``j`` over all N (``sum_i l_i / N`` without class balance), so
    the shares of disjoint anchor sets covering the N superpixels (one per DDP process) add up to the loss of
    the whole batch. Weights and votes are computed from the full ``similarity``, as with one process.

    Parameters
    ----------
    anchors : (K, C) tensor
        Superpoint embeddings of the anchors.
    positives : (N, C) tensor
        Superpixel embeddings of all N superpixels; row ``offset + i`` is the positive of anchor i.
    similarity : (N, N) tensor
        Cosine similarity of the teacher features of the N superpixels (no gradient taken).
    temperature, min_quantile, max_quantile, class_balance, balance_threshold
        As :func:`semantically_tolerant_infonce`.
    offset : int
        Row of the first anchor among the N.

    Returns
    -------
    loss : scalar tensor
    stats : dict
        ``dropped_negatives``: mean number of negatives of weight 0 per anchor.
    """
    num_anchors, num = anchors.shape[0], positives.shape[0]
    if similarity.shape != (num, num):
        raise ValueError(f"similarity must be ({num}, {num}), got {tuple(similarity.shape)}")
    if not 0 <= offset <= num - num_anchors:
        raise ValueError(f"anchors {offset}..{offset + num_anchors - 1} are not among the {num} superpixels")
    rows = slice(offset, offset + num_anchors)
    with torch.no_grad():
        similarity = similarity.detach().to(anchors.dtype)
        weights = semantic_tolerance_weights(similarity, min_quantile, max_quantile)[rows]
        dropped = float((weights == 0).sum() / num_anchors) if num_anchors else 0.0
    logits = (anchors @ positives.transpose(0, 1) / temperature) * weights
    target = torch.arange(num_anchors, device=logits.device) + offset
    per_anchor = F.cross_entropy(logits, target, reduction="none")
    if class_balance:
        with torch.no_grad():
            anchor_weights = class_balance_weights(similarity, balance_threshold)
        loss = (anchor_weights[rows] * per_anchor).sum() / anchor_weights.sum()
    else:
        loss = per_anchor.sum() / max(num, 1)
    return loss, {"dropped_negatives": dropped}


def _check_tolerant_inputs(point_features, pairing_images, pixel_features, superpixels, teacher_features) -> int:
    """Shape checks of the ST-SLidR inputs; returns P."""
    num_pairs, channels = _check_pairs(point_features, pairing_images, "point_features")
    if pixel_features.dim() != 4 or pixel_features.shape[1] != channels:
        raise ValueError(f"pixel_features must be (M, {channels}, H, W), got {tuple(pixel_features.shape)}")
    num_images, _, height, width = pixel_features.shape
    if superpixels is None or superpixels.shape != (num_images, height, width):
        shape = None if superpixels is None else tuple(superpixels.shape)
        raise ValueError(f"superpixels must be {(num_images, height, width)}, got {shape}")
    if teacher_features.dim() != 4 or teacher_features.shape[0] != num_images:
        raise ValueError(f"teacher_features must be ({num_images}, D, h, w), got {tuple(teacher_features.shape)}")
    if teacher_features.shape[2] > height or teacher_features.shape[3] > width:
        raise ValueError(f"teacher_features ({tuple(teacher_features.shape[2:])}) must not be larger than the "
                         f"superpixel maps ({height}, {width})")
    return num_pairs


def _tolerant_embeddings(point_features, pairing_images, pixel_features, superpixels, teacher_features,
                         renormalize) -> TolerantEmbeddings:
    point_features = _float32_at_least(point_features)
    pixel_features = _float32_at_least(pixel_features)
    _, _, height, width = pixel_features.shape
    if point_features.shape[0] == 0:
        none = point_features[:0]  # (0, C), still attached to the graph
        return TolerantEmbeddings(none, none, point_features.new_zeros(0, teacher_features.shape[1]), 0)
    image, row, col = pairing_images.to(device=point_features.device, dtype=torch.long).unbind(1)
    superpoints, superpixel_means, pooling = _superpixel_means(point_features, image, row, col, pixel_features,
                                                               superpixels.to(point_features.device))
    if renormalize:
        superpoints = F.normalize(superpoints, dim=1)
        superpixel_means = F.normalize(superpixel_means, dim=1)
    with torch.no_grad():
        teacher_means = _teacher_superpixel_means(teacher_features.detach().to(point_features.device), pooling,
                                                  height, width)
        seen = teacher_means.abs().amax(dim=1) > 0
        teacher_unit = F.normalize(teacher_means[seen], dim=1)
    return TolerantEmbeddings(superpoints[seen], superpixel_means[seen], teacher_unit, int((~seen).sum()))


def semantic_tolerance_weights(similarity: torch.Tensor, min_quantile: float = 0.01, max_quantile: float = 1.0
                               ) -> torch.Tensor:
    """ST-SLidR's weight of every negative from the teacher similarity of the two superpixels.

    ``w = 1 - clip(S, 0, 1)``. When ``min_quantile > 0`` or ``max_quantile < 1``, each row is then binarised as in
    the authors' release: with ``lo_i``, ``hi_i`` the row's ``min_quantile`` and ``max_quantile`` quantiles of
    ``w_i.`` (linear interpolation between order statistics, as ``torch.quantile``; the row includes its
    diagonal), ``w_ij = 1`` if ``lo_i <= w_ij <= hi_i`` and ``w_ij != 0``, else 0. Finally ``w_ii = 1`` (the
    positive).

    Parameters
    ----------
    similarity : (K, K) tensor
        Cosine similarity of the superpixels' teacher features.
    min_quantile, max_quantile : float
        See above (ST-SLidR: 0.01 and 1.0).

    Returns
    -------
    (K, K) tensor of weights in [0, 1].
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be (K, K), got {tuple(similarity.shape)}")
    weights = 1.0 - similarity.clamp(0.0, 1.0)
    if min_quantile > 0.0 or max_quantile < 1.0:
        keep = weights != 0
        if min_quantile > 0.0:
            keep &= weights >= _row_quantile(weights, min_quantile).unsqueeze(1)
        if max_quantile < 1.0:
            keep &= weights <= _row_quantile(weights, max_quantile).unsqueeze(1)
        weights = keep.to(weights.dtype)
    weights.fill_diagonal_(1.0)
    return weights


def class_balance_weights(similarity: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """ST-SLidR's class-agnostic balancing: anchors similar to many others (frequent classes) weigh less.

    ``votes_i = sum_j S_ij [S_ij >= threshold]`` (the diagonal included) approximates how frequent the anchor's
    class is; ``v = (votes - min votes) / (max votes - min votes)``; the weight is ``1 - v``: the most frequent
    anchor gets 0, the rarest 1. When all votes are equal (e.g. a single superpixel) the release divides 0 by 0;
    here every weight is then 1.

    Parameters
    ----------
    similarity : (K, K) tensor
        Cosine similarity of the superpixels' teacher features.
    threshold : float
        Similarities below it are noise and do not vote (ST-SLidR: 0.5).

    Returns
    -------
    (K,) tensor of weights in [0, 1]; at least one is 1 (their sum is >= 1).
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be (K, K), got {tuple(similarity.shape)}")
    votes = torch.where(similarity >= threshold, similarity, torch.zeros_like(similarity)).sum(dim=1)
    votes = votes - votes.min()
    top = votes.max()
    if not bool(top > 0):
        return torch.ones_like(votes)
    return 1.0 - votes / top


def _row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile of (K, N) ``values`` with linear interpolation (``torch.quantile``'s default),
    without ``torch.quantile``'s limit of 2**24 elements."""
    num = values.shape[1]
    rank = q * (num - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, num - 1)
    low = torch.kthvalue(values, lower + 1, dim=1).values
    if upper == lower or rank == lower:
        return low
    high = torch.kthvalue(values, upper + 1, dim=1).values
    return torch.lerp(low, high, rank - lower)


def _teacher_superpixel_means(teacher_features: torch.Tensor, pooling: _Pooling, height: int, width: int
                              ) -> torch.Tensor:
    """(K, D) mean teacher feature of each kept superpixel over its cells at the teacher's resolution (zero
    where it has none): the superpixel map is sampled by nearest neighbour, cell (i, j) <- pixel
    (floor(i H / h), floor(j W / w))."""
    num_images, channels, teacher_height, teacher_width = teacher_features.shape
    device = teacher_features.device
    rows = torch.arange(teacher_height, device=device) * height // teacher_height
    cols = torch.arange(teacher_width, device=device) * width // teacher_width
    sampled = (rows.unsqueeze(1) * width + cols.unsqueeze(0)).reshape(-1)
    labels = pooling.labels.to(device)[:, sampled]  # (M, h*w)
    features = _float32_at_least(teacher_features).reshape(num_images, channels, teacher_height * teacher_width)
    sums, counts = _per_label_sums(features, labels, pooling.num_labels)
    kept_image, kept_label = pooling.kept_image.to(device), pooling.kept_label.to(device)
    kept_counts = counts[kept_image, kept_label].unsqueeze(1)
    return sums[kept_image, :, kept_label] / kept_counts.clamp(min=1).to(sums.dtype)
