"""Sparse convolution as gather -> matmul -> scatter per kernel offset, with a hand-written backward.

The autograd function saves only the input features, the weight and the (cached) kernel map; the gathered
rows are recomputed in backward instead of kept, which keeps the memory of a deep U-Net close to that of its
activations.
"""

from __future__ import annotations

import math
import threading

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


# Consecutive kernel-offset groups are gathered and scattered together up to this many values per chunk: few
# calls where levels are small, cache-sized scratch rows where they are large.
_CHUNK_VALUES = 1 << 20


def _chunks(kernel_map: KernelMap, channels: int):
    """Yield (pair slice, [(kernel index, slice within the chunk)]) over the non-empty groups of a map."""
    limit = max(_CHUNK_VALUES // max(channels, 1), 1)
    members, chunk_start, start = [], 0, 0
    for kernel, size in zip(kernel_map.group_kernels, kernel_map.group_sizes):
        if size == 0:
            continue
        if members and start + size - chunk_start > limit:
            yield slice(chunk_start, start), members
            members, chunk_start = [], start
        members.append((kernel, slice(start - chunk_start, start - chunk_start + size)))
        start += size
    if members:
        yield slice(chunk_start, start), members


def _gather(source: torch.Tensor, index: torch.Tensor, slot: str) -> torch.Tensor:
    return torch.index_select(source, 0, index, out=_workspace.rows(slot, index.shape[0], source.shape[1], source))


def _new_output(rows: int, channels: int, base: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return base if base is not None else like.new_zeros((rows, channels))


class SparseConvFunction(torch.autograd.Function):
    """``out[o] = sum over pairs (i, o, k) of in[i] @ weight[k]`` for a :class:`KernelMap`; weight (K, Cin, Cout).

    Pairs are processed in chunks of consecutive kernel-offset groups (gather the chunk's rows, one matmul per
    offset, one scatter-add), so the scratch rows stay small; only the inputs, the weight and the map are saved
    for backward.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
        ctx.kernel_map = kernel_map
        ctx.save_for_backward(feats, weight)
        base = None
        if kernel_map.identity_kernel is not None:
            base = feats @ weight[kernel_map.identity_kernel]
        out = _new_output(kernel_map.num_out, weight.shape[2], base, feats)
        out_channels = weight.shape[2]
        for pairs, members in _chunks(kernel_map, max(feats.shape[1], out_channels)):
            rows = _gather(feats, kernel_map.in_index[pairs], "gather")
            products = _workspace.rows("product", rows.shape[0], out_channels, feats)
            for kernel, part in members:
                torch.mm(rows[part], weight[kernel], out=products[part])
            out.index_add_(0, kernel_map.out_index[pairs], products)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        kernel_map: KernelMap = ctx.kernel_map
        grad_out = grad_out.contiguous()
        need_feats, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_feats = grad_weight = None
        centre = kernel_map.identity_kernel
        if need_weight:
            grad_weight = torch.zeros_like(weight)
            if centre is not None:
                torch.mm(feats.t(), grad_out, out=grad_weight[centre])
        if need_feats:
            base = grad_out @ weight[centre].t() if centre is not None else None
            grad_feats = _new_output(kernel_map.num_in, feats.shape[1], base, feats)
        for pairs, members in _chunks(kernel_map, max(feats.shape[1], grad_out.shape[1])):
            in_index = kernel_map.in_index_by_in[pairs]
            grad_rows = _gather(grad_out, kernel_map.out_index_by_in[pairs], "grad_rows")
            if need_weight:
                rows = _gather(feats, in_index, "gather")
                for kernel, part in members:
                    # a kernel index occurs in one group only, so its gradient is written, not accumulated
                    torch.mm(rows[part].t(), grad_rows[part], out=grad_weight[kernel])
            if need_feats:
                products = _workspace.rows("product", grad_rows.shape[0], feats.shape[1], feats)
                for kernel, part in members:
                    torch.mm(grad_rows[part], weight[kernel].t(), out=products[part])
                grad_feats.index_add_(0, in_index, products)
        return grad_feats, grad_weight, None


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
    """Apply a sparse convolution given by ``kernel_map`` to features (num_in, Cin) with weight (K, Cin, Cout)."""
    return SparseConvFunction.apply(feats, weight, kernel_map)


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
        self.backend_impl = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ``±1 / sqrt(K * Cin)`` (the default of ``nn.Conv3d`` and of MinkowskiEngine)."""
        bound = 1.0 / math.sqrt(self.weight.shape[0] * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

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

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        if self.kernel_size == 1:
            return self._finish(x, x.feats @ self.weight[0], x.stride)
        kernel_map = x.cache.submanifold_map(x.stride, self.kernel_size)
        return self._finish(x, sparse_conv(x.feats, self.weight, kernel_map), x.stride)


class Conv3dDown(_SparseConvBase):
    """Kernel-2 stride-2 convolution onto the sites ``floor(c / 2)`` of the input sites."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 2, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        kernel_map = x.cache.downsample_map(x.stride)
        return self._finish(x, sparse_conv(x.feats, self.weight, kernel_map), 2 * x.stride)


class ConvTranspose3dUp(_SparseConvBase):
    """Kernel-2 stride-2 transposed convolution back onto the exact sites of the finer level."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 2, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.backend_impl is not None:
            return self.backend_impl(self, x)
        if x.stride < 2:
            raise ValueError("ConvTranspose3dUp needs an input at stride >= 2")
        kernel_map = x.cache.upsample_map(x.stride)
        return self._finish(x, sparse_conv(x.feats, self.weight, kernel_map), x.stride // 2)
