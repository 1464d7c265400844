"""The plain-PyTorch sparse engine against dense convolutions, and its invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slidr.errors import SlidrError
from slidr.models.sparse import (
    Conv3dDown,
    ConvTranspose3dUp,
    SparseBatchNorm,
    SparseTensor,
    SubmanifoldConv3d,
    cat,
    global_pool,
    kernel_offsets,
    sparse_conv,
)
from slidr.models.sparse.conv import chunk_plan

GRID = 8
LOW = (-4, -2, -6)  # even, so stride-2 cells of the dense grid are those of the sparse engine


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: OpenMP threads on a busy 2-core machine wait on each other far longer than they work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_sites(seed: int, batch: int = 2, grid: int = GRID, occupancy: float = 0.4) -> torch.Tensor:
    """(V, 4) int32 distinct [batch, x, y, z] sites, about ``occupancy`` of a grid^3 cube per scan, from LOW."""
    generator = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, grid, grid, grid, generator=generator) < occupancy
    coords = occupied.nonzero().to(torch.int32)
    coords[:, 1:] += torch.tensor(LOW, dtype=torch.int32)
    return coords[torch.randperm(coords.shape[0], generator=generator)]  # engine must not rely on order


def to_dense(coords: torch.Tensor, feats: torch.Tensor, batch: int, grid: int, stride: int = 1) -> torch.Tensor:
    """(B, C, g, g, g) dense grid of level ``stride`` with features placed at their sites."""
    size = grid // stride
    dense = feats.new_zeros(batch, feats.shape[1], size, size, size)
    idx = coords.long()
    low = torch.tensor(LOW) // stride
    dense[idx[:, 0], :, idx[:, 1] - low[0], idx[:, 2] - low[1], idx[:, 3] - low[2]] = feats
    return dense


def at_sites(dense: torch.Tensor, coords: torch.Tensor, stride: int = 1) -> torch.Tensor:
    idx = coords.long()
    low = torch.tensor(LOW) // stride
    return dense[idx[:, 0], :, idx[:, 1] - low[0], idx[:, 2] - low[1], idx[:, 3] - low[2]]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def dense_weight(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """Engine weight (K, Cin, Cout) as a conv3d weight (Cout, Cin, k, k, k)."""
    return weight.reshape(kernel, kernel, kernel, *weight.shape[1:]).permute(4, 3, 0, 1, 2)


def check_close(sparse: torch.Tensor, dense: torch.Tensor, dtype: torch.dtype) -> None:
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert sparse.shape == dense.shape
    assert relative_error(sparse, dense) < tolerance


def run_layer(layer, coords, feats, upstream_seed=7):
    """Forward, then backward of a random linear function of the output; returns output and gradients."""
    feats = feats.clone().requires_grad_(True)
    x = SparseTensor(coords, feats)
    if isinstance(layer, ConvTranspose3dUp):
        # build the coarse level from the fine sites, put the features there
        coarse = x.at_stride(2, feats)
        out = layer(coarse)
    else:
        out = layer(x)
    probe = torch.randn(out.feats.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=feats.dtype)
    (out.feats * probe).sum().backward()
    return out, probe, feats.grad, layer.weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_submanifold_conv_equals_dense_conv3d(dtype):
    torch.manual_seed(0)
    coords = random_sites(1)
    feats = torch.randn(coords.shape[0], 5, dtype=dtype)
    layer = SubmanifoldConv3d(5, 7).to(dtype)
    out, probe, grad_feats, grad_weight = run_layer(layer, coords, feats)
    assert torch.equal(out.coords, coords)  # output sites are the input sites, in order

    dense_x = to_dense(coords, feats, 2, GRID).requires_grad_(True)
    w = dense_weight(layer.weight.detach(), 3).requires_grad_(True)
    dense_out = at_sites(F.conv3d(dense_x, w, padding=1), coords)
    (dense_out * probe).sum().backward()
    check_close(out.feats.detach(), dense_out.detach(), dtype)
    check_close(grad_feats, at_sites(dense_x.grad, coords), dtype)
    check_close(dense_weight(grad_weight, 3), w.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_downsampling_conv_equals_dense_strided_conv3d(dtype):
    torch.manual_seed(1)
    coords = random_sites(2)
    feats = torch.randn(coords.shape[0], 4, dtype=dtype)
    layer = Conv3dDown(4, 6).to(dtype)
    out, probe, grad_feats, grad_weight = run_layer(layer, coords, feats)
    assert out.stride == 2
    expected_sites = torch.unique(torch.cat((coords[:, :1], torch.div(coords[:, 1:], 2, rounding_mode="floor")), 1),
                                  dim=0)
    assert torch.equal(torch.unique(out.coords, dim=0), expected_sites)

    dense_x = to_dense(coords, feats, 2, GRID).requires_grad_(True)
    w = dense_weight(layer.weight.detach(), 2).requires_grad_(True)
    dense_out = at_sites(F.conv3d(dense_x, w, stride=2), out.coords, stride=2)
    (dense_out * probe).sum().backward()
    check_close(out.feats.detach(), dense_out.detach(), dtype)
    check_close(grad_feats, at_sites(dense_x.grad, coords), dtype)
    check_close(dense_weight(grad_weight, 2), w.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_conv_equals_dense_conv_transpose3d_on_fine_sites(dtype):
    torch.manual_seed(2)
    coords = random_sites(3)
    fine = SparseTensor(coords, torch.zeros(coords.shape[0], 1, dtype=dtype))
    coarse_coords = fine.cache.level(2).coords
    feats = torch.randn(coarse_coords.shape[0], 6, dtype=dtype, requires_grad=True)
    layer = ConvTranspose3dUp(6, 3).to(dtype)
    out = layer(fine.at_stride(2, feats))
    assert out.stride == 1 and torch.equal(out.coords, coords)  # exactly back onto the finer sites
    probe = torch.randn(out.feats.shape, dtype=dtype)
    (out.feats * probe).sum().backward()

    dense_x = to_dense(coarse_coords, feats.detach(), 2, GRID, stride=2).requires_grad_(True)
    w = layer.weight.detach().reshape(2, 2, 2, 6, 3).permute(3, 4, 0, 1, 2).requires_grad_(True)
    dense_out = at_sites(F.conv_transpose3d(dense_x, w, stride=2), coords)
    (dense_out * probe).sum().backward()
    check_close(out.feats.detach(), dense_out.detach(), dtype)
    check_close(feats.grad, at_sites(dense_x.grad, coarse_coords, stride=2), dtype)
    check_close(layer.weight.grad.reshape(2, 2, 2, 6, 3).permute(3, 4, 0, 1, 2), w.grad, dtype)


def test_down_then_up_returns_to_the_fine_sites_across_levels():
    coords = random_sites(4, grid=12, occupancy=0.3)
    x = SparseTensor(coords, torch.randn(coords.shape[0], 2))
    downs = [Conv3dDown(2, 2) for _ in range(3)]
    ups = [ConvTranspose3dUp(2, 2) for _ in range(3)]
    levels = [x]
    for down in downs:
        levels.append(down(levels[-1]))
    out = levels[-1]
    for up, target in zip(ups, reversed(levels[:-1])):
        out = up(out)
        assert out.stride == target.stride and torch.equal(out.coords, target.coords)
    # every coarse site has at least one child and the counts shrink
    sizes = [len(level) for level in levels]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= 2


def test_scans_in_a_batch_do_not_mix():
    torch.manual_seed(5)
    coords = random_sites(6, batch=2)
    feats = torch.randn(coords.shape[0], 3)
    net = torch.nn.Sequential(SubmanifoldConv3d(3, 4), Conv3dDown(4, 4), SubmanifoldConv3d(4, 4),
                              ConvTranspose3dUp(4, 3))
    together = net(SparseTensor(coords, feats)).feats
    for b in range(2):
        mask = coords[:, 0] == b
        alone_coords = coords[mask].clone()
        alone_coords[:, 0] = 0
        alone = net(SparseTensor(alone_coords, feats[mask])).feats
        assert torch.allclose(together[mask], alone, atol=1e-6)


def test_identical_scans_at_different_batch_indices_give_identical_features():
    coords = random_sites(8, batch=1)
    shifted = coords.clone()
    shifted[:, 0] = 1
    feats = torch.randn(coords.shape[0], 2)
    layer = SubmanifoldConv3d(2, 2)
    out = layer(SparseTensor(torch.cat((coords, shifted)), torch.cat((feats, feats)))).feats
    assert torch.allclose(out[: len(coords)], out[len(coords):], atol=1e-6)


def test_pointwise_submanifold_conv_is_a_matmul():
    coords = random_sites(9)
    feats = torch.randn(coords.shape[0], 3)
    layer = SubmanifoldConv3d(3, 5, kernel_size=1, bias=True)
    out = layer(SparseTensor(coords, feats)).feats
    assert torch.allclose(out, feats @ layer.weight[0] + layer.bias, atol=1e-6)


def test_batch_norm_over_active_sites_matches_reference():
    coords = random_sites(10)
    feats = torch.randn(coords.shape[0], 4) * 3 + 1
    bn = SparseBatchNorm(4, momentum=0.05)
    out = bn(SparseTensor(coords, feats)).feats
    mean, var = feats.mean(0), feats.var(0, unbiased=False)
    assert torch.allclose(out, (feats - mean) / torch.sqrt(var + bn.eps), atol=1e-5)
    assert torch.allclose(bn.running_mean, 0.05 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.95 + 0.05 * feats.var(0, unbiased=True), atol=1e-5)


def test_global_pool_and_cat():
    coords = random_sites(11)
    feats = torch.randn(coords.shape[0], 3)
    x = SparseTensor(coords, feats)
    for b in range(2):
        mask = coords[:, 0] == b
        assert torch.allclose(global_pool(x, "mean")[b], feats[mask].mean(0), atol=1e-6)
        assert torch.equal(global_pool(x, "max")[b], feats[mask].amax(0))
    joined = cat(x, x.replace(feats * 2))
    assert torch.equal(joined.feats, torch.cat((feats, feats * 2), 1))
    with pytest.raises(SlidrError):
        cat(x, SparseTensor(coords, feats))  # another batch's sites


def test_bad_coordinates_give_clear_errors():
    coords = random_sites(12)
    with pytest.raises(SlidrError, match="duplicate"):
        SparseTensor(torch.cat((coords, coords[:1])), torch.zeros(len(coords) + 1, 1))
    with pytest.raises(SlidrError, match="shape"):
        SparseTensor(coords[:, :3], torch.zeros(len(coords), 1))
    with pytest.raises(SlidrError, match="features"):
        SparseTensor(coords, torch.zeros(len(coords) + 1, 1))
    negative_batch = coords.clone()
    negative_batch[0, 0] = -1
    with pytest.raises(SlidrError, match="batch"):
        SparseTensor(negative_batch, torch.zeros(len(coords), 1))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_map_pairs_equal_brute_force(kernel_size):
    # sparse sites over a wide range (long empty stretches in every packed dimension, sites at the array ends)
    generator = torch.Generator().manual_seed(14)
    coords = torch.unique(torch.cat((torch.randint(0, 3, (400, 1), generator=generator),
                                     torch.randint(-9, 9, (400, 3), generator=generator)), 1), dim=0)
    coords = coords[torch.randperm(len(coords), generator=generator)].to(torch.int32)
    cache = SparseTensor(coords, torch.zeros(len(coords), 1)).cache
    kernel_map = cache.submanifold_map(1, kernel_size)
    offsets = kernel_offsets(kernel_size)
    row_of = {tuple(c): i for i, c in enumerate(coords.tolist())}
    expected = set()
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets):
            j = row_of.get((b, x + dx, y + dy, z + dz))
            if j is not None and k != kernel_map.identity_kernel:
                expected.add((j, i, k))
    for ins, outs in ((kernel_map.in_index, kernel_map.out_index),
                      (kernel_map.in_index_by_in, kernel_map.out_index_by_in)):
        kernels = torch.repeat_interleave(torch.tensor(kernel_map.group_kernels), torch.tensor(kernel_map.group_sizes))
        found = list(zip(ins.tolist(), outs.tolist(), kernels.tolist()))
        assert len(found) == len(set(found)) and set(found) == expected


def test_kernel_maps_are_cached_and_reused():
    coords = random_sites(13)
    x = SparseTensor(coords, torch.randn(coords.shape[0], 2))
    first = x.cache.submanifold_map(1)
    SubmanifoldConv3d(2, 2)(x)
    assert x.cache.submanifold_map(1) is first
    down = x.cache.downsample_map(1)
    assert x.cache.upsample_map(2).in_index is down.out_index_by_in  # the same pairs, not rebuilt


# --- chunked execution and multiply-add counts ------------------------------------------------------------------


def dense_layer_reference(layer, coords, feats, probe):
    """Output, input gradient and conv3d-layout weight gradient of a submanifold or strided ``layer``, computed
    densely with conv3d."""
    dense_x = to_dense(coords, feats, 2, GRID).requires_grad_(True)
    k = layer.kernel_size
    w = dense_weight(layer.weight.detach(), k).requires_grad_(True)
    if isinstance(layer, SubmanifoldConv3d):
        dense_out = at_sites(F.conv3d(dense_x, w, padding=k // 2), coords)
    else:
        out_coords = SparseTensor(coords, feats).cache.level(2).coords
        dense_out = at_sites(F.conv3d(dense_x, w, stride=2), out_coords, stride=2)
    (dense_out * probe).sum().backward()
    return dense_out.detach(), at_sites(dense_x.grad, coords), w.grad


def chunked(layer, coords, feats, chunk_values):
    """Output and gradients of a conv layer run through ``sparse_conv`` with ``chunk_values`` per chunk."""
    feats = feats.clone().requires_grad_(True)
    x = SparseTensor(coords, feats)
    weight = layer.weight.detach().clone().requires_grad_(True)
    out = sparse_conv(feats, weight, layer.kernel_map(x), chunk_values)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=feats.dtype)
    (out * probe).sum().backward()
    return out.detach(), feats.grad, weight.grad, probe


@pytest.mark.parametrize("layer_type", ["submanifold", "strided"])
def test_chunked_conv_equals_dense_for_every_chunk_size(layer_type):
    torch.manual_seed(3)
    coords = random_sites(15)
    cin, cout = 3, 4
    feats = torch.randn(coords.shape[0], cin, dtype=torch.float64)
    layer = (SubmanifoldConv3d(cin, cout) if layer_type == "submanifold" else Conv3dDown(cin, cout)).double()
    kernel_map = layer.kernel_map(SparseTensor(coords, feats))
    sizes = [s for s in kernel_map.group_sizes if s > 0]
    width = max(cin, cout)
    # one pair per chunk, chunks ending exactly on a group boundary and one pair before/after it, several groups
    # per chunk, everything in one chunk
    rows_per_chunk = {1, sizes[0], sizes[0] - 1, sizes[0] + 1, sizes[0] + sizes[1], 3 * max(sizes) // 2, 10**6}
    for rows in sorted(r for r in rows_per_chunk if r > 0):
        out, grad_feats, grad_weight, probe = chunked(layer, coords, feats, rows * width)
        dense_out, dense_grad_feats, dense_grad_weight = dense_layer_reference(layer, coords, feats, probe)
        check_close(out, dense_out, torch.float64)
        check_close(grad_feats, dense_grad_feats, torch.float64)
        check_close(dense_weight(grad_weight, layer.kernel_size), dense_grad_weight, torch.float64)


def test_chunk_plan_covers_every_pair_once_and_splits_large_groups():
    coords = random_sites(16)
    kernel_map = SparseTensor(coords, torch.zeros(len(coords), 1)).cache.submanifold_map(1)
    for rows in (1, 5, 64, 10**6):
        for by_input in (False, True):
            plan = chunk_plan(kernel_map, rows, by_input)
            assert chunk_plan(kernel_map, rows, by_input) is plan  # cached with the map
            pairs = []
            firsts = []
            for chunk in plan:
                assert 0 < chunk.in_index.shape[0] <= rows
                assert chunk.members[-1][2] == chunk.in_index.shape[0]
                for kernel, start, stop, first in chunk.members:
                    pairs += [(i, o, kernel) for i, o in zip(chunk.in_index[start:stop].tolist(),
                                                               chunk.out_index[start:stop].tolist())]
                    firsts.append((kernel, first))
            assert len(pairs) == len(set(pairs)) == kernel_map.num_pairs
            # each offset's first rows are flagged once (the weight gradient is written there, then accumulated)
            assert sorted(k for k, first in firsts if first) == sorted(
                k for k, s in zip(kernel_map.group_kernels, kernel_map.group_sizes) if s > 0)


def test_offsets_without_pairs_get_zero_weight_gradient():
    # sites two cells apart: no neighbours at all, only the centre offset has "pairs"; then a z-line: only (0,0,+-1)
    isolated = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 2], [1, 0, 0, 0]], dtype=torch.int32)
    line = torch.tensor([[0, 0, 0, z] for z in range(-3, 4)], dtype=torch.int32)
    for coords in (isolated, line):
        feats = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
        layer = SubmanifoldConv3d(3, 2).double()
        torch.nn.init.normal_(layer.weight)
        out = layer(SparseTensor(coords, feats)).feats
        out.square().sum().backward()
        present = {layer.kernel_map(SparseTensor(coords, feats)).identity_kernel}
        if coords is line:
            present |= {12, 14}  # offsets (0, 0, -1) and (0, 0, +1)
        for kernel in range(27):
            if kernel not in present:
                assert torch.equal(layer.weight.grad[kernel], torch.zeros(3, 2, dtype=torch.float64))
        # and the values agree with a dense reference
        grid = 8
        dense_x = torch.zeros(2, 3, grid, grid, grid, dtype=torch.float64)
        idx = coords.long() + torch.tensor([0, 4, 4, 4])
        dense_x[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]] = feats.detach()
        dense_x.requires_grad_(True)
        w = dense_weight(layer.weight.detach(), 3).requires_grad_(True)
        dense_out = F.conv3d(dense_x, w, padding=1)[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]]
        dense_out.square().sum().backward()
        check_close(out.detach(), dense_out.detach(), torch.float64)
        check_close(layer.weight.grad, w.grad.permute(2, 3, 4, 1, 0).reshape(27, 3, 2), torch.float64)


def brute_force_multiply_adds(coords: torch.Tensor, layer) -> int:
    """Multiply-adds of one forward by enumerating every site's dense neighbourhood (sets of tuples)."""
    sites = {tuple(c) for c in coords.tolist()}
    cin, cout = layer.in_channels, layer.out_channels
    if isinstance(layer, SubmanifoldConv3d):
        products = sum((b, x + dx, y + dy, z + dz) in sites
                       for b, x, y, z in sites for dx, dy, dz in kernel_offsets(layer.kernel_size))
    else:  # kernel 2, stride 2, either direction: every (fine site, its parent) is one product
        products = len(sites)
    return products * cin * cout


def test_multiply_adds_equal_brute_force_count():
    coords = random_sites(17, grid=10, occupancy=0.3)
    x = SparseTensor(coords, torch.zeros(len(coords), 2))
    layers = [SubmanifoldConv3d(2, 5, 3), SubmanifoldConv3d(2, 5, 5), SubmanifoldConv3d(2, 5, 1), Conv3dDown(2, 3),
              ConvTranspose3dUp(2, 3)]
    for layer in layers:
        given = x.at_stride(2, torch.zeros(len(x.cache.level(2).coords), 2)) if isinstance(
            layer, ConvTranspose3dUp) else x
        assert layer.multiply_adds(given) == brute_force_multiply_adds(coords, layer)
