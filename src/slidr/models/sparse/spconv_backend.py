"""Optional spconv backend behind the engine's layers (for GPU users who installed the spconv build of their CUDA).

The layers keep their weights in the engine's layout (K, Cin, Cout); each call converts the weight to spconv's
(Cout, kx, ky, kz, Cin) and runs spconv's convolution with it, so state dicts and checkpoints are the same for
both backends and gradients flow to the same parameters.

Facts about spconv 2.3.8's CPU build that shape this module (measured, see the project notes): its backward asks
for a CUDA stream (patched to stream 0 when CUDA is absent); its scatter-add races with more than one thread (so
CPU use with more than one torch thread is refused); stride-2 layers drop sites on the upper border unless the grid
size is a multiple of 16 (the grid is padded to one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slidr.config import ConfigError
from slidr.errors import SlidrError
from slidr.models.sparse.conv import Conv3dDown, ConvTranspose3dUp, SubmanifoldConv3d, _SparseConvBase
from slidr.models.sparse.tensor import SparseTensor

# Stride-2 levels stay aligned with spconv's grid when the origin shift and the grid size are multiples of this.
_GRID_MULTIPLE = 16


def spconv_available() -> bool:
    """Whether ``spconv.pytorch`` imports."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return True


def to_spconv_weight(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Engine weight (k^3, Cin, Cout) as spconv's (Cout, k, k, k, Cin)."""
    k = kernel_size
    return weight.reshape(k, k, k, weight.shape[1], weight.shape[2]).permute(4, 0, 1, 2, 3)


def from_spconv_weight(weight: torch.Tensor) -> torch.Tensor:
    """spconv weight (Cout, k, k, k, Cin), k > 1, as the engine's (k^3, Cin, Cout) (to import spconv checkpoints)."""
    out_channels, kx, ky, kz, in_channels = weight.shape
    return weight.permute(1, 2, 3, 4, 0).reshape(kx * ky * kz, in_channels, out_channels).contiguous()


@dataclass
class _SpconvLevel:
    indices: torch.Tensor  # (V, 4) int32 [batch, x, y, z] shifted to spconv's non-negative grid
    spatial_shape: list[int]
    coords: torch.Tensor  # (V, 4) int32 in the engine's level coordinates


@dataclass
class _SpconvState:
    """spconv's sites per stride and its index-pair dictionary, kept in the batch's CoordinateCache."""

    shift: list[int]
    levels: dict[int, _SpconvLevel] = field(default_factory=dict)
    indice_dict: dict[str, Any] = field(default_factory=dict)


def _state(x: SparseTensor) -> _SpconvState:
    state = x.cache.extras.get("spconv")
    if state is None:
        coords = x.cache.levels[1].coords
        bounds = torch.stack((coords[:, 1:].amin(0), coords[:, 1:].amax(0))).tolist()
        shift = [-(low // _GRID_MULTIPLE) * _GRID_MULTIPLE for low in bounds[0]]
        shape = [-(-(high + s + 1) // _GRID_MULTIPLE) * _GRID_MULTIPLE for high, s in zip(bounds[1], shift)]
        indices = coords + torch.tensor([0, *shift], dtype=torch.int32, device=coords.device)
        state = _SpconvState(shift)
        state.levels[1] = _SpconvLevel(indices.contiguous(), shape, coords)
        x.cache.extras["spconv"] = state
    return state


class SpconvImpl:
    """Runs one engine conv layer through spconv; set as ``layer.backend_impl`` by :func:`use_backend`."""

    def __init__(self, layer: _SparseConvBase):
        import spconv.pytorch as spconv

        self.kind = type(layer).__name__
        self.kernel_size = layer.kernel_size
        cin, cout = layer.in_channels, layer.out_channels
        if isinstance(layer, SubmanifoldConv3d):
            self.make = lambda stride: spconv.SubMConv3d(cin, cout, self.kernel_size, bias=False,
                                                         indice_key=f"subm{stride}")
        elif isinstance(layer, Conv3dDown):
            self.make = lambda stride: spconv.SparseConv3d(cin, cout, 2, stride=2, bias=False,
                                                           indice_key=f"down{stride}")
        elif isinstance(layer, ConvTranspose3dUp):
            self.make = lambda stride: spconv.SparseInverseConv3d(cin, cout, 2, bias=False,
                                                                  indice_key=f"down{stride // 2}")
        else:
            raise TypeError(f"no spconv equivalent of {type(layer).__name__}")
        self.modules: dict[int, nn.Module] = {}

    def _module(self, stride: int, device: torch.device) -> Any:  # an spconv module (spconv is untyped)
        if stride not in self.modules:
            module = self.make(stride)
            del module.weight  # the engine layer's parameter is passed in at each call
            self.modules[stride] = module
        return self.modules[stride].to(device)

    def __call__(self, layer: _SparseConvBase, x: SparseTensor) -> SparseTensor:
        import spconv.pytorch as spconv

        if x.device.type == "cpu" and torch.get_num_threads() != 1:
            raise SlidrError(
                "spconv's CPU build gives wrong results with more than one thread: call torch.set_num_threads(1) "
                "or use backbone.backend=torch"
            )
        state = _state(x)
        level = state.levels[x.stride]
        module = self._module(x.stride, x.device)
        module.train(layer.training)
        tensor = spconv.SparseConvTensor(x.feats.contiguous(), level.indices, level.spatial_shape, x.batch_size,
                                         indice_dict=state.indice_dict)
        weight = to_spconv_weight(layer.weight, self.kernel_size).contiguous()
        out = module._conv_forward(layer.training, tensor, weight, None)
        state.indice_dict = out.indice_dict
        if isinstance(layer, SubmanifoldConv3d):
            stride = x.stride
        elif isinstance(layer, Conv3dDown):
            stride = 2 * x.stride
            if stride not in state.levels:
                shift = torch.tensor([0, *(s // stride for s in state.shift)], dtype=torch.int32, device=x.device)
                state.levels[stride] = _SpconvLevel(out.indices, list(out.spatial_shape), out.indices - shift)
        else:
            stride = x.stride // 2
        feats = out.features
        if layer.bias is not None:
            feats = feats + layer.bias
        return SparseTensor(state.levels[stride].coords, feats, stride, x.cache)


def _patch_cpu_stream() -> None:
    """spconv's backward asks for the current CUDA stream even on CPU; stream 0 is what its CPU kernels expect."""
    import spconv.pytorch.ops as ops

    if not torch.cuda.is_available():
        ops.get_current_stream = lambda: 0


def use_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every sparse conv layer of ``model`` to ``backend`` ("torch" or "spconv"); returns ``model``.

    Parameters and state dicts are unchanged, so a model can be switched back and forth.
    """
    if backend not in ("torch", "spconv"):
        raise ConfigError(f"backbone.backend: {backend!r} is not one of 'torch', 'spconv'")
    if backend == "spconv":
        if not spconv_available():
            raise ConfigError(
                "backbone.backend=spconv but spconv is not installed (pip install the spconv build of your CUDA, "
                "e.g. spconv-cu120), or use backbone.backend=torch"
            )
        _patch_cpu_stream()
    for module in model.modules():
        # a point-wise layer is one matmul in either backend (spconv's own does torch.mm too)
        if isinstance(module, _SparseConvBase) and module.kernel_size > 1:
            module.backend_impl = SpconvImpl(module) if backend == "spconv" else None
    return model
