"""Sparse tensors: integer coordinates, features, and the coordinate/kernel-map cache shared by all layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from slidr.errors import SlidrError
from slidr.models.sparse.maps import KernelMap, KeyPacking, downsample_map, submanifold_map


@dataclass
class Level:
    """The active sites at one stride: coordinates in that level's cells, their keys and the key packing."""

    coords: torch.Tensor  # (V, 4) int32 [batch, x, y, z]
    keys: torch.Tensor  # (V,) int64
    packing: KeyPacking
    sorted_keys: torch.Tensor  # (V,) int64 ascending
    order: Optional[torch.Tensor]  # (V,) int64 with keys[order] = sorted_keys; None when keys are sorted


class CoordinateCache:
    """Coordinates of every stride level of one batch and the kernel maps between them, built once on demand.

    Every layer of a network (and its backward) reuses these: a level's submanifold map is built by the first
    convolution at that stride, the stride-2 map by the first downsampling and reused, transposed, by the
    upsampling back onto the finer sites.

    Parameters
    ----------
    coords : torch.Tensor
        (V, 4) integer ``[batch, x, y, z]`` at stride 1, no duplicate rows; x, y, z may be negative.
    """

    def __init__(self, coords: torch.Tensor):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise SlidrError(f"sparse coordinates must have shape (V, 4) [batch, x, y, z], got {tuple(coords.shape)}")
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise SlidrError(f"sparse coordinates must be integers, got {coords.dtype}")
        if coords.shape[0] == 0:
            raise SlidrError("a sparse tensor needs at least one active site")
        coords = coords.to(torch.int32)
        bounds = torch.stack((coords.amin(dim=0), coords.amax(dim=0))).tolist()
        low, high = bounds
        if low[0] < 0:
            raise SlidrError(f"sparse coordinates have a negative batch index ({low[0]})")
        packing = KeyPacking.covering(low[1:], high[1:], high[0] + 1)
        keys = packing.pack(coords)
        sorted_keys, order = torch.sort(keys)
        if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise SlidrError("sparse coordinates contain duplicate sites; voxelize so that each site occurs once")
        self.batch_size = high[0] + 1
        self.levels: dict[int, Level] = {1: Level(coords, keys, packing, sorted_keys, order)}
        self.maps: dict[tuple[str, int, int], KernelMap] = {}
        # Backend-specific state (e.g. spconv's index pairs), keyed by the backend's own names.
        self.extras: dict[str, Any] = {}

    def level(self, stride: int) -> Level:
        """Sites at ``stride`` (a power of two), derived from the finer levels on first use."""
        if stride not in self.levels:
            if stride < 2 or stride & (stride - 1):
                raise ValueError(f"stride must be a power of two, got {stride}")
            self.downsample_map(stride // 2)
        return self.levels[stride]

    def submanifold_map(self, stride: int, kernel_size: int = 3) -> KernelMap:
        """Kernel map of a submanifold convolution at ``stride``."""
        key = ("submanifold", stride, kernel_size)
        if key not in self.maps:
            level = self.level(stride)
            self.maps[key] = submanifold_map(level.keys, level.packing, kernel_size, level.sorted_keys, level.order)
        return self.maps[key]

    def downsample_map(self, stride: int) -> KernelMap:
        """Kernel map of the kernel-2 stride-2 convolution from ``stride`` to ``2 * stride``."""
        key = ("down", stride, 2)
        if key not in self.maps:
            fine = self.level(stride)
            packing = fine.packing.coarser()
            coords, keys, kernel_map = downsample_map(fine.coords, packing)
            self.levels[2 * stride] = Level(coords, keys, packing, keys, None)  # unique() sorted them
            self.maps[key] = kernel_map
        return self.maps[key]

    def upsample_map(self, stride: int) -> KernelMap:
        """Kernel map of the transposed convolution from ``stride`` back onto the exact sites of ``stride // 2``."""
        key = ("up", stride, 2)
        if key not in self.maps:
            if stride // 2 not in self.levels or stride not in self.levels:
                raise SlidrError(f"no finer level to upsample stride {stride} onto: downsample to it first")
            self.maps[key] = self.downsample_map(stride // 2).transposed()
        return self.maps[key]


class SparseTensor:
    """Features on the active sites of a batch of voxel grids.

    Parameters
    ----------
    coords : torch.Tensor
        (V, 4) integer ``[batch, x, y, z]`` in this level's cells (stride-1 voxels when ``stride`` is 1).
    feats : torch.Tensor
        (V, C) features, row ``i`` at site ``coords[i]``.
    stride : int
        Size of this level's cells in stride-1 voxels.
    cache : CoordinateCache, optional
        Shared cache of the batch; a new one is built from ``coords`` (which must then be stride 1).
    """

    def __init__(self, coords: torch.Tensor, feats: torch.Tensor, stride: int = 1,
                 cache: CoordinateCache | None = None):
        if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            raise SlidrError(
                f"sparse features must have shape (V, C) with V = {coords.shape[0]} sites, got {tuple(feats.shape)}"
            )
        if cache is None:
            if stride != 1:
                raise SlidrError("a sparse tensor at stride > 1 must share the cache of its stride-1 tensor")
            cache = CoordinateCache(coords)
            coords = cache.levels[1].coords
        self.coords = coords
        self.feats = feats
        self.stride = stride
        self.cache = cache

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def __len__(self) -> int:
        return self.feats.shape[0]

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """The same sites with new features (V, C')."""
        return SparseTensor(self.coords, feats, self.stride, self.cache)

    def at_stride(self, stride: int, feats: torch.Tensor) -> "SparseTensor":
        """Features ``feats`` on the sites of another level of the same batch."""
        return SparseTensor(self.cache.level(stride).coords, feats, stride, self.cache)

    def __repr__(self) -> str:
        return f"SparseTensor(sites={len(self)}, channels={self.feats.shape[1]}, stride={self.stride})"
