"""Sparse convolution as gather -> matmul -> scatter per kernel offset, with a hand-written backward.

The autograd function saves only the input features, the weight and the (cached) kernel map; the gathered
rows are recomputed in backward instead of kept, which keeps the memory of a deep U-Net close to that of its
activations.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from slidr.models.sparse.maps import KernelMap
from slidr.models.sparse.tensor import SparseTensor


class _Workspace(threading.local):
    """Reusable scratch rows for the per-offset gathers on CPU (one set per thread).

    A fresh multi-megabyte tensor on CPU costs page faults on first touch, which took more time than the gather
    itself; one group's rows (a few MB) are reused across all layers instead and stay in cache for the matmul.
    On other devices the caching allocator already reuses memory, so fresh tensors are used.
    """

    def __init__(self):
        self.buffers: dict[tuple[str, torch.dtype, bool], torch.Tensor] = {}

    def rows(self, slot: str, num_rows: int, num_cols: int, like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return like.new_empty((num_rows, num_cols))
        # tensors made under torch.inference_mode cannot be written outside it (and the reverse): one set of
        # buffers for each, so evaluating (Lightning tests in inference mode) and then training in one process works
        key = (slot, like.dtype, torch.is_inference_mode_enabled())
        buffer = self.buffers.get(key)
        size = num_rows * num_cols
        if buffer is None or buffer.numel() < size:
            buffer = like.new_empty(size)
            self.buffers[key] = buffer
        return buffer[:size].view(num_rows, num_cols)


_workspace = _Workspace()


# Pairs are gathered, multiplied and scattered in chunks of at most this many values (rows x channels): on CPU a
# chunk's scratch rows stay in cache for the matrix products and the scatter; elsewhere larger chunks mean fewer
# kernel launches. Measured on the MinkUNet34 benchmark (one thread): 2**18 to 2**22 values per chunk are within
# noise of each other, 2**16 was ~6% slower; 2**20 was kept.
CHUNK_VALUES = {"cpu": 1 << 20}
DEFAULT_CHUNK_VALUES = 1 << 24


@dataclass(frozen=True)
class _Chunk:
    """Consecutive pairs of a kernel map processed together: one gather, one product per member, one scatter.

    ``members`` are ``(kernel, start, stop, first)``: the rows ``start:stop`` of the chunk belong to kernel offset
    ``kernel``; ``first`` says whether they are that offset's first rows in the map (a group larger than a chunk is
    split over several chunks, and its weight gradient is accumulated over them).
    """

    in_index: torch.Tensor
    out_index: torch.Tensor
    members: tuple[tuple[int, int, int, bool], ...]
    sizes: tuple[int, ...]  # rows of each member: the chunk's rows are split into per-offset views in one call


def chunk_rows(feats: torch.Tensor, in_channels: int, out_channels: int, chunk_values: int | None = None) -> int:
    """Rows per chunk for features on ``feats``' device: ``chunk_values`` (default per device) / widest side."""
    values = chunk_values or CHUNK_VALUES.get(feats.device.type, DEFAULT_CHUNK_VALUES)
    return max(values // max(in_channels, out_channels, 1), 1)


def chunk_plan(kernel_map: KernelMap, rows: int, by_input: bool) -> list[_Chunk]:
    """The map's pairs cut into chunks of at most ``rows`` pairs, in forward order (pairs sorted by output within
    each group) or backward order (``by_input``); built once per map and chunk size, kept in ``kernel_map.plans``.
    Empty groups are skipped."""
    key = (rows, by_input)
    known = kernel_map.plans.get(key)
    if known is not None:
        return known
    in_index = kernel_map.in_index_by_in if by_input else kernel_map.in_index
    out_index = kernel_map.out_index_by_in if by_input else kernel_map.out_index
    plan: list[_Chunk] = []
    members: list[tuple[int, int, int, bool]] = []
    chunk_start = position = 0
    for kernel, size in zip(kernel_map.group_kernels, kernel_map.group_sizes):
        done = 0
        while done < size:
            if position - chunk_start == rows:
                plan.append(_chunk(in_index, out_index, chunk_start, position, members))
                members, chunk_start = [], position
            take = min(rows - (position - chunk_start), size - done)
            members.append((kernel, position - chunk_start, position - chunk_start + take, done == 0))
            position += take
            done += take
    if members:
        plan.append(_chunk(in_index, out_index, chunk_start, position, members))
    kernel_map.plans[key] = plan
    return plan


def _chunk(in_index: torch.Tensor, out_index: torch.Tensor, start: int, stop: int, members: list) -> _Chunk:
    return _Chunk(in_index[start:stop], out_index[start:stop], tuple(members),
                  tuple(end - begin for _, begin, end, _ in members))


def _gather(source: torch.Tensor, index: torch.Tensor, slot: str) -> torch.Tensor:
    return torch.index_select(source, 0, index, out=_workspace.rows(slot, index.shape[0], source.shape[1], source))


class SparseConvFunction(torch.autograd.Function):
    """``out[o] = sum over pairs (i, o, k) of in[i] @ weight[k]`` for a :class:`KernelMap`; weight (K, Cin, Cout).

    Pairs are processed in chunks (see :func:`chunk_plan`): gather the chunk's input rows, one matrix product per
    kernel offset of the chunk, one scatter-add into the outputs, so the scratch rows stay small. Only the inputs,
    the weight and the map are saved for backward, which recomputes the gathers. Where every output (input) row
    occurs in exactly one pair the scatter writes instead of adding, into an uninitialised tensor.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap,
                chunk_values: int | None = None) -> torch.Tensor:
        ctx.kernel_map, ctx.chunk_values = kernel_map, chunk_values
        ctx.save_for_backward(feats, weight)
        in_channels, out_channels = weight.shape[1], weight.shape[2]
        if kernel_map.identity_kernel is not None:
            out = feats @ weight[kernel_map.identity_kernel]
        elif kernel_map.out_unique:
            out = feats.new_empty((kernel_map.num_out, out_channels))
        else:
            out = feats.new_zeros((kernel_map.num_out, out_channels))
        write_once = kernel_map.out_unique and kernel_map.identity_kernel is None
        rows = chunk_rows(feats, in_channels, out_channels, chunk_values)
        weights = weight.unbind(0)  # views made once, not per product (Python overhead adds up over ~4000 calls)
        for chunk in chunk_plan(kernel_map, rows, by_input=False):
            gathered = _gather(feats, chunk.in_index, "gather")
            products = _workspace.rows("product", gathered.shape[0], out_channels, feats)
            sizes = chunk.sizes
            for member, rows_in, rows_out in zip(chunk.members, gathered.split(sizes), products.split(sizes)):
                torch.mm(rows_in, weights[member[0]], out=rows_out)
            if write_once:
                out.index_copy_(0, chunk.out_index, products)
            else:
                out.index_add_(0, chunk.out_index, products)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        kernel_map: KernelMap = ctx.kernel_map
        grad_out = grad_out.contiguous()
        in_channels, out_channels = weight.shape[1], weight.shape[2]
        need_feats, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_feats = grad_weight = None
        centre = kernel_map.identity_kernel
        written: set[int] = set()
        if need_weight:
            grad_weight = torch.empty_like(weight)
            if centre is not None:
                torch.mm(feats.t(), grad_out, out=grad_weight[centre])
                written.add(centre)
        write_once = kernel_map.in_unique and centre is None
        if need_feats:
            if centre is not None:
                grad_feats = grad_out @ weight[centre].t()
            elif write_once:
                grad_feats = feats.new_empty((kernel_map.num_in, in_channels))
            else:
                grad_feats = feats.new_zeros((kernel_map.num_in, in_channels))
        rows = chunk_rows(feats, in_channels, out_channels, ctx.chunk_values)
        weights_t = weight.transpose(1, 2).unbind(0)
        grad_weights = grad_weight.unbind(0) if grad_weight is not None else ()  # need_weight
        for chunk in chunk_plan(kernel_map, rows, by_input=True):
            grad_rows = _gather(grad_out, chunk.out_index, "grad_rows")
            sizes = chunk.sizes
            grad_parts = grad_rows.split(sizes)
            if need_weight:
                gathered = _gather(feats, chunk.in_index, "gather")
                for (kernel, _, _, first), rows_in, rows_grad in zip(chunk.members, gathered.split(sizes), grad_parts):
                    if first:
                        torch.mm(rows_in.t(), rows_grad, out=grad_weights[kernel])
                        written.add(kernel)
                    else:  # the rest of a group split over chunks
                        grad_weights[kernel].addmm_(rows_in.t(), rows_grad)
            if grad_feats is not None:  # need_feats
                products = _workspace.rows("product", grad_rows.shape[0], in_channels, feats)
                for member, rows_grad, rows_out in zip(chunk.members, grad_parts, products.split(sizes)):
                    torch.mm(rows_grad, weights_t[member[0]], out=rows_out)
                if write_once:
                    grad_feats.index_copy_(0, chunk.in_index, products)
                else:
                    grad_feats.index_add_(0, chunk.in_index, products)
        if grad_weight is not None and len(written) < weight.shape[0]:  # need_weight
            for kernel in range(weight.shape[0]):
                if kernel not in written:  # an offset without pairs
                    grad_weight[kernel].zero_()
        return grad_feats, grad_weight, None, None


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap,
                chunk_values: int | None = None) -> torch.Tensor:
    """Apply a sparse convolution given by ``kernel_map`` to features (num_in, Cin) with weight (K, Cin, Cout).

    Returns (num_out, Cout). ``chunk_values`` bounds the scratch memory (values per chunk; default per device).
    """
    return SparseConvFunction.apply(feats, weight, kernel_map, chunk_values)


class _SparseConvBase(nn.Module):
    """Holds a weight (K, Cin, Cout) in kernel-offset order (see :func:`slidr.models.sparse.maps.kernel_offsets`).

    The layout is the same for every backend, so a state dict does not depend on the backend that trained it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        volume = kernel_size**3
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # Set by slidr.models.sparse.use_backend; None = the plain PyTorch engine.
        self.backend_impl: Optional[Callable[[_SparseConvBase, SparseTensor], SparseTensor]] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ``±1 / sqrt(K * Cin)`` (the default of ``nn.Conv3d`` and of MinkowskiEngine)."""
        bound = 1.0 / math.sqrt(self.weight.shape[0] * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        """The map this layer applies to ``x`` (from the batch's cache; built on first use)."""
        raise NotImplementedError

    def multiply_adds(self, x: SparseTensor) -> int:
        """Multiply-adds of this layer's forward on ``x`` (its backward does twice as many)."""
        return self.kernel_map(x).multiply_adds(self.in_channels, self.out_channels)

    def _finish(self, x: SparseTensor, feats: torch.Tensor, stride: int) -> SparseTensor:
        if self.bias is not None:
            feats = feats + self.bias
        if stride == x.stride:
            return x.replace(feats)
        return x.at_stride(stride, feats)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
                f"{', bias=False' if self.bias is None else ''}")


class SubmanifoldConv3d(_SparseConvBase):
    """Submanifold convolution: output sites = input sites, cubic odd kernel (3 in SR-UNet; 1 = point-wise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f"SubmanifoldConv3d needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        return x.cache.submanifold_map(x.stride, self.kernel_size)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        if self.kernel_size == 1:
            return self._finish(x, x.feats @ self.weight[0], x.stride)
        return self._finish(x, sparse_conv(x.feats, self.weight, self.kernel_map(x)), x.stride)


class Conv3dDown(_SparseConvBase):
    """Kernel-2 stride-2 convolution onto the sites ``floor(c / 2)`` of the input sites."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 2, bias)

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        return x.cache.downsample_map(x.stride)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        return self._finish(x, sparse_conv(x.feats, self.weight, self.kernel_map(x)), 2 * x.stride)


class ConvTranspose3dUp(_SparseConvBase):
    """Kernel-2 stride-2 transposed convolution back onto the exact sites of the finer level."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 2, bias)

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        if x.stride < 2:
            raise ValueError("ConvTranspose3dUp needs an input at stride >= 2")
        return x.cache.upsample_map(x.stride)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        return self._finish(x, sparse_conv(x.feats, self.weight, self.kernel_map(x)), x.stride // 2)
