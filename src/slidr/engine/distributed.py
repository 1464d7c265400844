"""DDP helpers: whether processes run together, and gathering rows across them with gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed() -> bool:
    """True when several processes run together (an initialised process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true in some process (one small all-reduce; ``flag`` itself without DDP).

    Every process must call it at the same point: e.g. before collective operations that a process with nothing
    to contribute would otherwise skip, leaving the others waiting.
    """
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` (N_r, ...) of every process along dim 0; gradients flow to the local part only.

    Sizes may differ across processes (padded for the exchange). Every process gets the same order (rank 0's
    rows first). Returns the concatenation and the row offset of this process's rows; without DDP,
    ``(tensor, 0)``.
    """
    if not is_distributed():
        return tensor, 0
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    parts = [part[:n] for part, n in zip(parts, counts)]
    parts[rank] = tensor  # the local rows keep their graph
    return torch.cat(parts), sum(counts[:rank])


def gathered_info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE whose negatives are the positives of every DDP process (gradients through the local ones).

    Parameters
    ----------
    anchors, positives : (N, C) row-aligned local embeddings.
    temperature : float

    Returns
    -------
    Scalar loss; equal to :func:`slidr.methods.losses.info_nce` without DDP.
    """
    everyone, offset = gather_with_grad(positives)
    logits = anchors @ everyone.transpose(0, 1) / temperature
    target = torch.arange(anchors.shape[0], device=anchors.device) + offset
    return F.cross_entropy(logits, target)
