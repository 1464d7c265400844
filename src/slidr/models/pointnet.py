"""A PointNet++-style point network (DepthContrast's point-format encoder): set abstraction, then global pooling.

Each set-abstraction level picks ``centers`` points of its input (a random subset: farthest point sampling
costs O(N * centers) sequential steps and matters little for a global embedding), groups the ``neighbors``
nearest input points of each centre, encodes ``[relative xyz, features]`` with a shared MLP and max-pools over
the group. A last shared MLP and a max over all remaining points give one vector per cloud.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def shared_mlp(channels: Sequence[int]) -> nn.Sequential:
    """1x1 convolutions with batch norm and ReLU over (B, C, ...) tensors."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def group_neighbors(xyz: torch.Tensor, features: torch.Tensor, centers: torch.Tensor, neighbors: int
                    ) -> torch.Tensor:
    """Grouped ``[xyz - centre, features]`` of the nearest points of each centre.

    Parameters
    ----------
    xyz : (B, N, 3) points.
    features : (B, N, C) point features.
    centers : (B, S, 3) centres.
    neighbors : points per group (at most N).

    Returns
    -------
    (B, 3 + C, S, K) grouped inputs.
    """
    k = min(neighbors, xyz.shape[1])
    nearest = torch.cdist(centers, xyz).topk(k, dim=2, largest=False).indices  # (B, S, K)
    batch = torch.arange(xyz.shape[0], device=xyz.device).view(-1, 1, 1)
    relative = xyz[batch, nearest] - centers.unsqueeze(2)
    return torch.cat([relative, features[batch, nearest]], dim=3).permute(0, 3, 1, 2)


class SetAbstraction(nn.Module):
    """One PointNet++ level: sample centres, group neighbours, shared MLP, max over each group."""

    def __init__(self, centers: int, neighbors: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.centers = centers
        self.neighbors = neighbors
        self.mlp = shared_mlp(channels)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = min(self.centers, xyz.shape[1])
        chosen = torch.randperm(xyz.shape[1], device=xyz.device)[:count]
        centers = xyz[:, chosen]
        grouped = self.mlp(group_neighbors(xyz, features, centers, self.neighbors))  # (B, C', S, K)
        return centers, grouped.amax(dim=3).transpose(1, 2)


class PointNet2Encoder(nn.Module):
    """Global embedding of point clouds: (B, N, 3 + C) -> (B, out_channels).

    Parameters
    ----------
    in_channels : int
        Features per point besides xyz (1: intensity).
    out_channels : int
        Size of the global feature.
    centers : sequence of int
        Centres of each set-abstraction level.
    neighbors : int
        Group size.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 512, centers: Sequence[int] = (512, 128),
                 neighbors: int = 32) -> None:
        super().__init__()
        widths = [(64, 64, 128), (128, 128, 256)]
        levels, c_in = [], in_channels
        for count, width in zip(centers, widths):
            levels.append(SetAbstraction(count, neighbors, (c_in + 3, *width)))
            c_in = width[-1]
        self.levels = nn.ModuleList(levels)
        self.final = shared_mlp((c_in + 3, 256, out_channels))
        self.out_channels = out_channels

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz, features = points[..., :3].contiguous(), points[..., 3:]
        for level in self.levels:
            xyz, features = level(xyz, features)
        inputs = torch.cat([xyz, features], dim=2).transpose(1, 2).unsqueeze(3)  # (B, 3 + C, S, 1)
        return self.final(inputs).amax(dim=(2, 3))
