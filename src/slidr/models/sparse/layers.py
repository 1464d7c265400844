"""Point-wise layers on sparse tensors: batch norm over the active sites, ReLU, skip concatenation, pooling."""

from __future__ import annotations

import torch
from torch import nn

from slidr.errors import SlidrError
from slidr.models.sparse.tensor import SparseTensor


class SparseBatchNorm(nn.BatchNorm1d):
    """Batch normalisation over the active sites (each site is one sample); state dict as ``nn.BatchNorm1d``."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.Module):
    """ReLU on the features."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(torch.relu(x.feats))


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate the channels of sparse tensors on the same sites (the U-Net's skip connections)."""
    first = tensors[0]
    for other in tensors[1:]:
        if other.cache is not first.cache or other.stride != first.stride or len(other) != len(first):
            raise SlidrError("sparse tensors concatenated along channels must live on the same sites")
    return first.replace(torch.cat([t.feats for t in tensors], dim=1))


def global_pool(x: SparseTensor, mode: str = "mean") -> torch.Tensor:
    """One vector per scan: mean or max of the features of its active sites, (batch_size, C).

    A scan without sites gets zeros.
    """
    batch = x.coords[:, 0].to(torch.int64)
    size = (x.batch_size, x.feats.shape[1])
    if mode == "mean":
        sums = x.feats.new_zeros(size).index_add_(0, batch, x.feats)
        counts = torch.bincount(batch, minlength=x.batch_size).clamp_(min=1).to(x.feats.dtype)
        return sums / counts.unsqueeze(1)
    if mode == "max":
        index = batch.unsqueeze(1).expand_as(x.feats)
        return x.feats.new_zeros(size).scatter_reduce_(0, index, x.feats, reduce="amax", include_self=False)
    raise ValueError(f"global_pool mode must be 'mean' or 'max', got {mode!r}")
