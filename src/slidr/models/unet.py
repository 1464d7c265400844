"""SR-UNet: the sparse residual U-Net of SLidR (MinkUNet34C, from PointContrast's Res16UNet34C).

Stem: submanifold conv (kernel 3) to 32 channels + BN + ReLU. Encoder: four times (stride-2 conv kernel 2 + BN +
ReLU, then residual basic blocks). Decoder: four times (transposed conv kernel 2 + BN + ReLU back onto the finer
sites, concatenation with the encoder features of that level, basic blocks). A point-wise linear layer ``final``
maps the last 96 channels to the output size, optionally L2-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from slidr.config import BackboneConfig
from slidr.models import BACKBONES
from slidr.models.sparse import (
    Conv3dDown,
    ConvTranspose3dUp,
    SparseBatchNorm,
    SparseReLU,
    SparseTensor,
    SubmanifoldConv3d,
    cat,
)


@dataclass(frozen=True)
class UNetPreset:
    """Width and depth of an SR-UNet: stem width, channels and number of blocks of the 8 stages."""

    stem: int
    planes: tuple[int, ...]
    blocks: tuple[int, ...]


PRESETS = {
    "minkunet34": UNetPreset(32, (32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2)),
    "minkunet18": UNetPreset(32, (32, 64, 128, 256, 256, 128, 96, 96), (2, 2, 2, 2, 2, 2, 2, 2)),
    "minkunet14": UNetPreset(32, (32, 64, 128, 256, 256, 128, 96, 96), (1, 1, 1, 1, 1, 1, 1, 1)),
    "minkunet34_half": UNetPreset(16, (16, 32, 64, 128, 128, 64, 48, 48), (2, 3, 4, 6, 2, 2, 2, 2)),
    "minkunet14_half": UNetPreset(16, (16, 32, 64, 128, 128, 64, 48, 48), (1, 1, 1, 1, 1, 1, 1, 1)),
}


class BasicBlock(nn.Module):
    """Two submanifold 3-convs with BN, ReLU between, and a residual (point-wise conv + BN when widths differ).

    The two batch norms use ``block_bn_momentum`` and the shortcut's uses ``bn_momentum``: in the authors' release
    (PointContrast's Res16UNet) the network's ``bn_momentum`` reaches the shortcut but not the block, whose own
    batch norms keep their default of 0.1.
    """

    def __init__(self, in_channels: int, channels: int, bn_momentum: float, block_bn_momentum: float):
        super().__init__()
        self.conv1 = SubmanifoldConv3d(in_channels, channels, 3)
        self.norm1 = SparseBatchNorm(channels, momentum=block_bn_momentum)
        self.conv2 = SubmanifoldConv3d(channels, channels, 3)
        self.norm2 = SparseBatchNorm(channels, momentum=block_bn_momentum)
        self.relu = SparseReLU()
        self.downsample = None
        if in_channels != channels:
            self.downsample = nn.Sequential(
                SubmanifoldConv3d(in_channels, channels, 1), SparseBatchNorm(channels, momentum=bn_momentum)
            )

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return out.replace(torch.relu(out.feats + residual.feats))


def _stage(in_channels: int, channels: int, blocks: int, bn_momentum: float, block_bn_momentum: float
           ) -> nn.Sequential:
    layers = [BasicBlock(in_channels, channels, bn_momentum, block_bn_momentum)]
    layers += [BasicBlock(channels, channels, bn_momentum, block_bn_momentum) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _ConvBNReLU(nn.Sequential):
    def __init__(self, conv: nn.Module, channels: int, bn_momentum: float):
        super().__init__(conv, SparseBatchNorm(channels, momentum=bn_momentum), SparseReLU())


class SRUNet(nn.Module):
    """Sparse residual U-Net with four stride-2 levels.

    Parameters
    ----------
    preset : UNetPreset
        Widths and depths (see ``PRESETS``).
    in_channels : int
        Input feature channels per voxel (1: intensity).
    out_channels : int
        Output channels of ``final`` (64 for pretraining, number of classes downstream).
    bn_momentum : float
        Momentum (PyTorch convention) of the batch norms outside the residual blocks and of the blocks' shortcuts.
    normalize_output : bool
        L2-normalise each output vector.
    block_bn_momentum : float
        Momentum of the two batch norms of every residual block (the release: 0.1, see :class:`BasicBlock`).
    transposed_init_fan : {"out", "in"}
        Initial weights of the transposed convolutions, uniform in ``±1 / sqrt(8 * fan)``: ``"out"`` takes the
        output channels as MinkowskiEngine's transposed convolutions do (the release), ``"in"`` the input channels
        like every other convolution (slidr 0.1). They differ where the width changes (256 -> 128, 128 -> 96).
    """

    def __init__(self, preset: UNetPreset, in_channels: int, out_channels: int, bn_momentum: float = 0.05,
                 normalize_output: bool = False, block_bn_momentum: float = 0.1,
                 transposed_init_fan: str = "out"):
        super().__init__()
        p, n, m, mb = preset.planes, preset.blocks, bn_momentum, block_bn_momentum
        self.normalize_output = normalize_output
        self.feature_channels = p[7]
        self.stem = _ConvBNReLU(SubmanifoldConv3d(in_channels, preset.stem, 3), preset.stem, m)
        encoder_in = (preset.stem, p[0], p[1], p[2])
        self.down = nn.ModuleList(_ConvBNReLU(Conv3dDown(c, c), c, m) for c in encoder_in)
        self.encoder = nn.ModuleList(
            _stage(c, planes, blocks, m, mb) for c, planes, blocks in zip(encoder_in, p[:4], n[:4])
        )
        decoder_in = (p[3], p[4], p[5], p[6])
        skips = (p[2], p[1], p[0], preset.stem)
        if transposed_init_fan not in ("out", "in"):
            raise ValueError(f"transposed_init_fan must be 'out' or 'in', got {transposed_init_fan!r}")
        transposed = [ConvTranspose3dUp(c, planes) for c, planes in zip(decoder_in, p[4:])]
        if transposed_init_fan == "out":  # MinkowskiEngine's bound for transposed convolutions
            for conv in transposed:
                bound = 1.0 / math.sqrt(conv.weight.shape[0] * conv.out_channels)
                nn.init.uniform_(conv.weight, -bound, bound)
        self.up = nn.ModuleList(_ConvBNReLU(conv, planes, m) for conv, planes in zip(transposed, p[4:]))
        self.decoder = nn.ModuleList(
            _stage(planes + skip, planes, blocks, m, mb) for planes, skip, blocks in zip(p[4:], skips, n[4:])
        )
        self.final = nn.Linear(p[7], out_channels)

    def forward_features(self, x: SparseTensor) -> torch.Tensor:
        """Features (V, ``feature_channels``) of the input sites, before ``final``."""
        out = self.stem(x)
        skips = [out]
        for down, stage in zip(self.down, self.encoder):
            out = stage(down(out))
            skips.append(out)
        skips.pop()  # the deepest level feeds the decoder directly
        for up, stage in zip(self.up, self.decoder):
            out = stage(cat(up(out), skips.pop()))
        return out.feats

    def forward(self, x: SparseTensor) -> torch.Tensor:
        """Output (V, out_channels) per input site, L2-normalised when ``normalize_output``."""
        out = self.final(self.forward_features(x))
        if self.normalize_output:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out


def _unet_constructor(preset: UNetPreset) -> Callable[[BackboneConfig], SRUNet]:
    def build(cfg: BackboneConfig) -> SRUNet:
        return SRUNet(preset, cfg.in_channels, cfg.out_channels, cfg.bn_momentum, cfg.normalize_output,
                      cfg.block_bn_momentum, cfg.transposed_init_fan)

    return build


for _name, _preset in PRESETS.items():
    BACKBONES.register(_name, _unet_constructor(_preset), preset=_preset)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The 3D backbone named by ``cfg.name`` (:data:`slidr.models.BACKBONES`), on the backend ``cfg.backend``.

    Raises
    ------
    ConfigError
        ``cfg.name`` is not registered, or the backend is unknown.
    """
    model = BACKBONES.get(cfg.name, where="backbone.name")(cfg)
    if cfg.backend != "torch":
        from slidr.models.sparse.spconv_backend import use_backend

        use_backend(model, cfg.backend)
    return model
