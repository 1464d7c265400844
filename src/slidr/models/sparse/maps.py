"""Coordinate hashing and kernel (neighbour) maps of sparse convolutions, in plain PyTorch.

Coordinates are packed into sortable int64 keys; neighbours are found with ``torch.searchsorted`` in the sorted
keys. Everything runs on the coordinates' device (no host round trip except a handful of scalar sizes).

A :class:`KernelMap` lists, for every kernel offset, which input row contributes to which output row:
``out[out_index[p]] += in[in_index[p]] @ weight[kernel]`` for the pairs ``p`` of that offset's group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, cast

import torch

from slidr.errors import SlidrError

# Keys must stay below 2**62 so that adding a neighbour offset can never overflow int64.
_MAX_KEY = 2**62


@dataclass(frozen=True)
class KeyPacking:
    """Bijection between integer coordinates ``[batch, x, y, z]`` of one level and int64 keys.

    Each spatial axis gets a margin of one cell on both sides, so ``key(c) + delta(o)`` is the key of ``c + o``
    for every offset ``o`` in ``{-1, 0, 1}^3`` without wrapping into another row, column or scan.

    Parameters
    ----------
    low : tuple of int
        Smallest x, y, z coordinate of the level.
    extent : tuple of int
        Number of cells along x, y, z including the two margin cells.
    batch_size : int
        Number of scans (batch indices are ``0 .. batch_size - 1``).
    """

    low: tuple[int, int, int]
    extent: tuple[int, int, int]
    batch_size: int

    @staticmethod
    def covering(low: list[int], high: list[int], batch_size: int) -> "KeyPacking":
        """Packing for coordinates within ``[low, high]`` (inclusive, per axis) and ``batch_size`` scans."""
        extent = tuple(int(hi - lo + 3) for lo, hi in zip(low, high))
        total = batch_size * extent[0] * extent[1] * extent[2]
        if total >= _MAX_KEY:
            raise SlidrError(
                f"sparse coordinates span {[hi - lo + 1 for lo, hi in zip(low, high)]} cells in {batch_size} scans: "
                "too large to hash into 64-bit keys; use a larger voxel size"
            )
        three = tuple[int, int, int]  # x, y, z
        return KeyPacking(cast(three, tuple(int(v) for v in low)), cast(three, extent), int(batch_size))

    def coarser(self) -> "KeyPacking":
        """Packing of the level whose coordinates are ``floor(c / 2)`` of this one's."""
        low = [lo // 2 for lo in self.low]
        high = [(lo + e - 3) // 2 for lo, e in zip(self.low, self.extent)]
        return KeyPacking.covering(low, high, self.batch_size)

    def pack(self, coords: torch.Tensor) -> torch.Tensor:
        """Keys (V,) int64 of coordinates (V, 4) ``[batch, x, y, z]``; sorting keys sorts lexicographically."""
        c = coords.to(torch.int64)
        ex, ey, ez = self.extent
        x = c[:, 1] - (self.low[0] - 1)
        y = c[:, 2] - (self.low[1] - 1)
        z = c[:, 3] - (self.low[2] - 1)
        return ((c[:, 0] * ex + x) * ey + y) * ez + z

    def unpack(self, keys: torch.Tensor) -> torch.Tensor:
        """Coordinates (V, 4) int32 of keys (V,) int64 (inverse of :meth:`pack`)."""
        ex, ey, ez = self.extent
        z = keys % ez
        rest = keys // ez
        y = rest % ey
        rest = rest // ey
        x = rest % ex
        batch = rest // ex
        coords = torch.stack(
            (batch, x + (self.low[0] - 1), y + (self.low[1] - 1), z + (self.low[2] - 1)), dim=1
        )
        return coords.to(torch.int32)

    def delta(self, offset: tuple[int, int, int]) -> int:
        """Key difference between ``c + offset`` and ``c``."""
        _, ey, ez = self.extent
        return (offset[0] * ey + offset[1]) * ez + offset[2]


@dataclass
class KernelMap:
    """Input/output row pairs of a sparse convolution, grouped by kernel offset.

    The pairs are kept in two orders with the same groups: sorted by output row within each group (the forward
    pass scatter-adds into the outputs) and sorted by input row (the backward pass scatter-adds into the input
    gradient); scattering into ascending rows is markedly faster than into random ones.

    Parameters
    ----------
    in_index, out_index : torch.Tensor
        (P,) int64 row indices into the input and output features; pairs of one kernel offset are contiguous
        and sorted by ``out_index`` within their group.
    in_index_by_in, out_index_by_in : torch.Tensor
        The same pairs sorted by ``in_index`` within each group.
    group_kernels : list of int
        Weight index (into the (K, Cin, Cout) weight) of each group, in order.
    group_sizes : list of int
        Number of pairs of each group (sums to P).
    num_in, num_out : int
        Number of input and output sites.
    identity_kernel : int or None
        A kernel index applied to every site as ``out = in @ weight[k]`` without gathering (the centre of a
        submanifold convolution; input and output sites coincide).
    in_unique, out_unique : bool
        Every input (output) row occurs in exactly one pair: its gradient (value) is written once, not
        accumulated (the fine side of a stride-2 map).
    plans : dict
        Chunk plans of :mod:`slidr.models.sparse.conv`, built on first use and kept with the map, so the
        forward and backward of every layer sharing the map reuse them.
    """

    in_index: torch.Tensor
    out_index: torch.Tensor
    in_index_by_in: torch.Tensor
    out_index_by_in: torch.Tensor
    group_kernels: list[int]
    group_sizes: list[int]
    num_in: int
    num_out: int
    identity_kernel: Optional[int] = None
    in_unique: bool = False
    out_unique: bool = False
    plans: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_pairs(self) -> int:
        """Number of gathered pairs (the identity kernel's sites not included)."""
        return sum(self.group_sizes)

    def multiply_adds(self, in_channels: int, out_channels: int) -> int:
        """Multiply-adds of one forward convolution with this map: one ``Cin x Cout`` product per pair and per
        site of the identity kernel. Its backward does twice as many (input gradient and weight gradient)."""
        identity = self.num_out if self.identity_kernel is not None else 0
        return (self.num_pairs + identity) * in_channels * out_channels

    def transposed(self) -> "KernelMap":
        """The map of the transposed convolution: the same pairs with input and output swapped."""
        return KernelMap(
            in_index=self.out_index_by_in,
            out_index=self.in_index_by_in,
            in_index_by_in=self.out_index,
            out_index_by_in=self.in_index,
            group_kernels=self.group_kernels,
            group_sizes=self.group_sizes,
            num_in=self.num_out,
            num_out=self.num_in,
            identity_kernel=self.identity_kernel,
            in_unique=self.out_unique,
            out_unique=self.in_unique,
        )


def _sorted_within_groups(group: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Permutation ordering pairs by group, then by ``index`` (< ``num``) within each group."""
    return torch.argsort(group * num + index)


def kernel_offsets(kernel_size: int) -> list[tuple[int, int, int]]:
    """Offsets of a cubic kernel in weight order: index ``(i * k + j) * k + l`` is offset ``(i, j, l) - r``.

    ``r = (k - 1) // 2``: a 3-kernel covers ``-1..1`` (centred), a 2-kernel covers ``0..1`` (a stride-2 cell).
    This is the order of ``torch.nn.functional.conv3d`` weights ``w[:, :, i, j, l]``.
    """
    r = (kernel_size - 1) // 2
    span = range(kernel_size)
    return [(i - r, j - r, k - r) for i in span for j in span for k in span]


def submanifold_map(keys: torch.Tensor, packing: KeyPacking, kernel_size: int = 3,
                    sorted_keys: Optional[torch.Tensor] = None, order: Optional[torch.Tensor] = None) -> KernelMap:
    """Kernel map of a submanifold convolution (output sites = input sites) with an odd cubic kernel.

    Only the offsets after the centre in weight order are searched; each found pair ``(i, j)`` of offset ``o``
    (``j`` is ``i``'s neighbour at ``+o``) is also the pair ``(j, i)`` of offset ``-o``, so the other half of the
    map is the mirrored first half. Offsets that differ only in z have consecutive keys, so one binary search per
    (x, y) column of the kernel finds its lowest cell and the others are among the next few sorted keys.

    Parameters
    ----------
    keys : torch.Tensor
        (V,) int64 keys of the sites (from ``packing.pack``), any order, no duplicates.
    packing : KeyPacking
        The packing that produced ``keys``.
    kernel_size : int
        Odd kernel width (3 in SR-UNet; 1 gives a point-wise map).
    sorted_keys, order : torch.Tensor, optional
        ``torch.sort(keys)`` when already known (``order`` None: ``keys`` are sorted).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"submanifold convolution needs an odd kernel size, got {kernel_size}")
    num = keys.shape[0]
    offsets = kernel_offsets(kernel_size)
    centre = len(offsets) // 2
    empty = torch.zeros(0, dtype=torch.int64, device=keys.device)
    if kernel_size == 1 or num == 0:
        return KernelMap(empty, empty, empty, empty, [], [], num, num, identity_kernel=centre)
    if sorted_keys is None:
        sorted_keys, order = torch.sort(keys)
    r = kernel_size // 2
    columns = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if (dx, dy) >= (0, 0)]
    lowest = torch.tensor([packing.delta((dx, dy, -r)) for dx, dy in columns], device=keys.device)
    base = keys.unsqueeze(0) + lowest.unsqueeze(1)  # (C, V): key of the lowest-z cell of each column
    start = torch.searchsorted(sorted_keys, base)
    # the keys base + dz_index (dz_index < kernel_size) sit at sorted positions start .. start + kernel_size - 1
    at = start.unsqueeze(1) + torch.arange(kernel_size, device=keys.device).view(1, -1, 1)  # (C, k, V)
    dz_index = sorted_keys[at.clamp(max=num - 1)] - base.unsqueeze(1)
    dz_index = torch.where((dz_index < kernel_size) & (at < num), dz_index, kernel_size)  # row k: not a neighbour
    found = torch.zeros(len(columns), kernel_size + 1, num, dtype=torch.bool, device=keys.device)
    found.scatter_(1, dz_index, True)
    positions = torch.empty(len(columns), kernel_size + 1, num, dtype=torch.int64, device=keys.device)
    positions.scatter_(1, dz_index, at)
    # rows in weight order; the first column is (0, 0), of which only the z-offsets above the centre are wanted
    found = found[:, :kernel_size].reshape(-1, num)[r + 1:]
    positions = positions[:, :kernel_size].reshape(-1, num)[r + 1:]
    group, site = found.nonzero(as_tuple=True)  # row-major: grouped by offset, sites ascending
    neighbour = positions[group, site]
    if order is not None:
        neighbour = order[neighbour]
    sizes = found.sum(dim=1).tolist()
    forward_kernels = list(range(centre + 1, len(offsets)))
    mirrored_kernels = [len(offsets) - 1 - k for k in forward_kernels]
    # searched half: sorted by site within each offset; the same pairs sorted by neighbour serve the other order
    by_neighbour = _sorted_within_groups(group, neighbour, num)
    site_b, neighbour_b = site[by_neighbour], neighbour[by_neighbour]
    return KernelMap(
        in_index=torch.cat((neighbour, site_b)),
        out_index=torch.cat((site, neighbour_b)),
        in_index_by_in=torch.cat((neighbour_b, site)),
        out_index_by_in=torch.cat((site_b, neighbour)),
        group_kernels=forward_kernels + mirrored_kernels,
        group_sizes=sizes + sizes,
        num_in=num,
        num_out=num,
        identity_kernel=centre,
    )


def downsample_map(coords: torch.Tensor, coarse_packing: KeyPacking) -> tuple[torch.Tensor, torch.Tensor, KernelMap]:
    """Coarse sites and kernel map of a kernel-2, stride-2 convolution.

    The coarse sites are the distinct ``floor(c / 2)`` of the fine sites; fine site ``c`` contributes to its
    parent through kernel offset ``c - 2 * floor(c / 2)`` in ``{0, 1}^3``. Every fine site occurs exactly once,
    so the transposed map (upsampling) writes each fine site exactly once, from its parent.

    Parameters
    ----------
    coords : torch.Tensor
        (V, 4) int32 ``[batch, x, y, z]`` of the fine level (may be negative).
    coarse_packing : KeyPacking
        Packing of the coarse level.

    Returns
    -------
    coarse_coords : torch.Tensor
        (Vc, 4) int32, sorted by key.
    coarse_keys : torch.Tensor
        (Vc,) int64, ascending.
    kernel_map : KernelMap
        Fine (input) to coarse (output) pairs, grouped by the 8 kernel offsets.
    """
    spatial = coords[:, 1:].to(torch.int64)
    parent = torch.div(spatial, 2, rounding_mode="floor")
    parity = spatial - 2 * parent
    kernel = (parity[:, 0] * 4 + parity[:, 1] * 2 + parity[:, 2])
    parent_coords = torch.cat((coords[:, :1].to(torch.int64), parent), dim=1)
    coarse_keys, inverse = torch.unique(coarse_packing.pack(parent_coords), sorted=True, return_inverse=True)
    fine_order = torch.argsort(kernel, stable=True)  # by kernel offset, then by fine row
    coarse = inverse[fine_order]
    by_coarse = _sorted_within_groups(kernel[fine_order], coarse, coarse_keys.shape[0])
    sizes = torch.bincount(kernel, minlength=8).tolist()
    kernel_map = KernelMap(
        in_index=fine_order[by_coarse],
        out_index=coarse[by_coarse],
        in_index_by_in=fine_order,
        out_index_by_in=coarse,
        group_kernels=list(range(8)),
        group_sizes=sizes,
        num_in=coords.shape[0],
        num_out=coarse_keys.shape[0],
        in_unique=True,
    )
    return coarse_packing.unpack(coarse_keys), coarse_keys, kernel_map
