"""3D object detector: a sparse 3D backbone, its point features pooled into a bird's-eye view, CenterPoint heads.

The backbone (any :class:`~slidr.models.unet.SRUNet`, pretrained or not; its last layer ``final`` is not used)
gives one feature vector per voxel. Each point takes its voxel's features (through the voxelization's
``inverse_map``), so the head does not depend on how the backbone voxelized the scan (cylindrical or Cartesian).
The point features are pooled into a Cartesian BEV grid (:func:`bev_scatter`), a small 2D CNN (:class:`BevNeck`,
SECOND's multi-scale design) mixes neighbouring cells, and CenterPoint's heads (:class:`CenterHeads`) predict a
per-class centre heatmap and, at every cell, the box of an object centred there. Targets, loss and decoding are
the pure functions of :mod:`slidr.methods.detection`.

BEV grid convention (:class:`BevGrid`): cell ``(row, col)`` covers ``x in [x_min + col * cell, x_min + (col + 1) *
cell)`` and ``y in [y_min + row * cell, ...)``; maps are ``(B, C, rows, cols)``; a cell's flat index is
``row * cols + col``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from slidr.config import ConfigError, DetectionHeadConfig
from slidr.models.sparse import SparseTensor
from slidr.models.unet import SRUNet

GEOMETRIC_CHANNELS = 4  # log(1 + points), min / mean / max height (scaled to the z range)
# the regression heads of CenterPoint, in the order of the regression channels
REGRESSION_HEADS = (("offset", 2), ("z", 1), ("size", 3), ("yaw", 2))
HEATMAP_PRIOR = 0.1  # initial centre probability everywhere (CenterNet's bias init: log(0.1 / 0.9) = -2.19)


@dataclass(frozen=True)
class BevGrid:
    """The bird's-eye-view grid: a Cartesian lidar-frame range cut into square cells.

    Points with ``x_min <= x < x_max``, ``y_min <= y < y_max``, ``z_min <= z <= z_max`` are pooled; the others
    are left out.
    """

    x_min: float
    y_min: float
    z_min: float
    x_max: float
    y_max: float
    z_max: float
    cell: float

    @classmethod
    def from_config(cls, cfg: DetectionHeadConfig) -> "BevGrid":
        x_min, y_min, z_min, x_max, y_max, z_max = map(float, cfg.point_range)
        return cls(x_min, y_min, z_min, x_max, y_max, z_max, float(cfg.cell_size))

    @property
    def rows(self) -> int:
        """Cells along y."""
        return round((self.y_max - self.y_min) / self.cell)

    @property
    def cols(self) -> int:
        """Cells along x."""
        return round((self.x_max - self.x_min) / self.cell)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def cell_of(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cells of positions: ``xy`` (N, 2+) -> (row (N,) int64, col (N,) int64, inside (N,) bool).

        ``inside`` is false where ``x`` or ``y`` is outside the range (row and col are then meaningless).
        """
        col = torch.floor((xy[:, 0] - self.x_min) / self.cell).long()
        row = torch.floor((xy[:, 1] - self.y_min) / self.cell).long()
        inside = (col >= 0) & (col < self.cols) & (row >= 0) & (row < self.rows)
        return row, col, inside


def bev_scatter(features: torch.Tensor, xyz: torch.Tensor, batch: torch.Tensor, batch_size: int, grid: BevGrid,
                pooling: Literal["max", "mean"] = "max", geometric: bool = True) -> torch.Tensor:
    """Pool point features into bird's-eye-view cells.

    Parameters
    ----------
    features : (N, C) float
        Per-point features (differentiable).
    xyz : (N, 3+) float
        Point coordinates in the lidar frame (only x, y, z are read; no gradient flows into them).
    batch : (N,) int64
        Scan of each point, in ``0 .. batch_size - 1``.
    batch_size : int
    grid : BevGrid
    pooling : ``"max"`` or ``"mean"`` of the features of the points of a cell.
    geometric : add :data:`GEOMETRIC_CHANNELS` channels: ``log(1 + n)`` of the cell's point count and the
        minimum, mean and maximum ``(z - z_min) / (z_max - z_min)`` of its points.

    Returns
    -------
    (B, C [+ 4], rows, cols) float: empty cells and points outside the grid's range contribute zeros.
    """
    num_points = features.shape[0]
    if features.ndim != 2 or xyz.ndim != 2 or xyz.shape[1] < 3 or xyz.shape[0] != num_points \
            or batch.shape != (num_points,):
        raise ValueError(f"bev_scatter: features (N, C), xyz (N, 3+) and batch (N,) must agree, got "
                         f"{tuple(features.shape)}, {tuple(xyz.shape)}, {tuple(batch.shape)}")
    if pooling not in ("max", "mean"):
        raise ConfigError(f"pooling must be 'max' or 'mean', got {pooling!r}")
    xyz = xyz[:, :3].detach().float()  # cells in float32 even under mixed precision (half steps 6 cm at 64 m)
    row, col, inside = grid.cell_of(xyz)
    inside &= (xyz[:, 2] >= grid.z_min) & (xyz[:, 2] <= grid.z_max)
    cells_per_scan = grid.rows * grid.cols
    index = (batch.long() * cells_per_scan + row * grid.cols + col)[inside]
    num_cells = batch_size * cells_per_scan
    values = features[inside]
    pooled = values.new_zeros(num_cells, values.shape[1]).scatter_reduce(
        0, index.unsqueeze(1).expand(-1, values.shape[1]), values, "amax" if pooling == "max" else "mean",
        include_self=False)
    if geometric:
        height = (xyz[inside, 2] - grid.z_min) / (grid.z_max - grid.z_min)
        count = torch.bincount(index, minlength=num_cells).to(height.dtype)
        low = height.new_zeros(num_cells).scatter_reduce(0, index, height, "amin", include_self=False)
        mean = height.new_zeros(num_cells).index_add(0, index, height) / count.clamp(min=1)
        high = height.new_zeros(num_cells).scatter_reduce(0, index, height, "amax", include_self=False)
        geometry = torch.stack([torch.log1p(count), low, mean, high], dim=1)
        pooled = torch.cat([pooled, geometry.to(pooled.dtype)], dim=1)
    return pooled.view(batch_size, grid.rows, grid.cols, pooled.shape[1]).permute(0, 3, 1, 2).contiguous()


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int, momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3, momentum=momentum), nn.ReLU(inplace=True)]


class BevNeck(nn.Module):
    """SECOND's 2D backbone: blocks at decreasing resolutions, each upsampled back and concatenated.

    Block ``i`` is a 3x3 convolution (stride 1 for the first block, 2 for the others) to ``channels[i]`` and
    ``layers[i]`` further 3x3 convolutions, each with batch norm and ReLU; its output is brought back to the
    input resolution by a transposed convolution (kernel = stride = ``2**i``) to ``upsample_channels``.
    Output: (B, ``len(channels) * upsample_channels``, H, W) for an input (B, ``in_channels``, H, W) of any size.
    """

    def __init__(self, in_channels: int, channels: list[int] | tuple[int, ...], layers: list[int] | tuple[int, ...],
                 upsample_channels: int, bn_momentum: float = 0.01):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        width = in_channels
        for level, (out, count) in enumerate(zip(channels, layers)):
            modules = _conv_bn_relu(width, out, 1 if level == 0 else 2, bn_momentum)
            for _ in range(count):
                modules += _conv_bn_relu(out, out, 1, bn_momentum)
            self.blocks.append(nn.Sequential(*modules))
            scale = 2**level
            up: nn.Module = (nn.Conv2d(out, upsample_channels, 1, bias=False) if scale == 1 else
                             nn.ConvTranspose2d(out, upsample_channels, scale, stride=scale, bias=False))
            self.upsample.append(nn.Sequential(up, nn.BatchNorm2d(upsample_channels, eps=1e-3, momentum=bn_momentum),
                                               nn.ReLU(inplace=True)))
            width = out
        self.out_channels = len(channels) * upsample_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        outputs = []
        for block, up in zip(self.blocks, self.upsample):
            x = block(x)
            # stride-2 blocks round odd sizes up: crop the upsampled map back to the input's size
            outputs.append(up(x)[..., :height, :width])
        return torch.cat(outputs, dim=1)


class CenterHeads(nn.Module):
    """CenterPoint's heads: a shared 3x3 convolution, then one small head per output group.

    Each head is a 3x3 convolution + BN + ReLU and a 3x3 convolution to its outputs: the per-class centre
    heatmap (logits; bias initialised to the prior :data:`HEATMAP_PRIOR`, as CenterNet) and the regression
    groups of :data:`REGRESSION_HEADS` (sub-cell offset, z, log size, sin/cos yaw).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64, bn_momentum: float = 0.01):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=True),
                                    nn.BatchNorm2d(channels, eps=1e-3, momentum=bn_momentum), nn.ReLU(inplace=True))
        outputs = {"heatmap": num_classes, **dict(REGRESSION_HEADS)}
        finals = {name: nn.Conv2d(channels, count, 3, padding=1, bias=True) for name, count in outputs.items()}
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=True),
                                nn.BatchNorm2d(channels, eps=1e-3, momentum=bn_momentum), nn.ReLU(inplace=True), final)
            for name, final in finals.items()})
        bias = finals["heatmap"].bias
        assert bias is not None  # built with bias=True
        nn.init.constant_(bias, math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in, H, W) -> ``heatmap`` (B, classes, H, W) logits, ``regression`` (B, 8, H, W)."""
        shared = self.shared(bev)
        regression = torch.cat([self.heads[name](shared) for name, _ in REGRESSION_HEADS], dim=1)
        return {"heatmap": self.heads["heatmap"](shared), "regression": regression}


class BevDetectionHead(nn.Module):
    """Everything after the 3D backbone: BEV pooling of point features, :class:`BevNeck`, :class:`CenterHeads`."""

    def __init__(self, in_channels: int, cfg: DetectionHeadConfig):
        super().__init__()
        self.grid = BevGrid.from_config(cfg)
        self.pooling: Literal["max", "mean"] = cfg.pooling
        self.geometric = cfg.geometric_features
        self.num_classes = len(cfg.classes)
        bev_channels = in_channels + (GEOMETRIC_CHANNELS if cfg.geometric_features else 0)
        self.neck = BevNeck(bev_channels, cfg.neck_channels, cfg.neck_layers, cfg.upsample_channels, cfg.bn_momentum)
        self.heads = CenterHeads(self.neck.out_channels, self.num_classes, cfg.head_channels, cfg.bn_momentum)

    def forward(self, point_features: torch.Tensor, points: torch.Tensor, point_batch: torch.Tensor,
                batch_size: int) -> dict[str, torch.Tensor]:
        """Point features (N, C), points (N, 3+), their scans (N,) -> the heads' maps (see :class:`CenterHeads`)."""
        bev = bev_scatter(point_features, points, point_batch, batch_size, self.grid, self.pooling, self.geometric)
        return self.heads(self.neck(bev))


class Detector(nn.Module):
    """A 3D backbone and a :class:`BevDetectionHead`.

    The backbone is ``model_points`` (the name every slidr training module gives its 3D network, so a
    detector's state dict keeps the pretrained file's key layout under ``model_points.``); its ``final`` layer
    is not used and takes no gradient.
    """

    def __init__(self, backbone: SRUNet, cfg: DetectionHeadConfig):
        super().__init__()
        self.model_points = backbone
        backbone.final.requires_grad_(False)  # unused: no parameter without a gradient (DDP would complain)
        self.head = BevDetectionHead(backbone.feature_channels, cfg)
        self.grid = self.head.grid
        self.classes = list(cfg.classes)

    def forward(self, voxels: SparseTensor, points: torch.Tensor, inverse_map: torch.Tensor,
                point_batch: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        """Detection maps of a batch of scans.

        Parameters
        ----------
        voxels : SparseTensor with coords (V, 4) ``[batch, i, j, k]`` and feats (V, C_in)
        points : (N, 3+) lidar-frame points of the batch (x, y, z first)
        inverse_map : (N,) int64 voxel row of each point (offset into the batch's voxels)
        point_batch : (N,) int64 scan of each point
        batch_size : int

        Returns
        -------
        dict: ``heatmap`` (B, classes, rows, cols) centre logits, ``regression`` (B, 8, rows, cols) in the layout of
        :data:`slidr.methods.detection.REGRESSION_CODE`.
        """
        voxel_features = self.model_points.forward_features(voxels)
        return self.head(voxel_features[inverse_map], points, point_batch, batch_size)


def build_detector(backbone: SRUNet, cfg: DetectionHeadConfig) -> Detector:
    """A :class:`Detector` on ``backbone`` with the head settings ``cfg`` (validated)."""
    cfg.validate("head")
    return Detector(backbone, cfg)
