"""The spconv backend against the plain-PyTorch engine, layer by layer and for a whole U-Net (one thread only:
spconv's CPU build is wrong with more). Skipped where spconv is not installed."""

from __future__ import annotations

import copy

import pytest
import torch

from slidr.config import BackboneConfig
from slidr.errors import SlidrError
from slidr.models.sparse import Conv3dDown, ConvTranspose3dUp, SparseTensor, SubmanifoldConv3d
from slidr.models.sparse.spconv_backend import from_spconv_weight, spconv_available, to_spconv_weight, use_backend
from slidr.models.unet import build_backbone
from test_sparse import one_thread, random_sites, relative_error  # noqa: F401 - one_thread is an autouse fixture

pytestmark = pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (optional backend)")


def both_backends(layer):
    return layer, use_backend(copy.deepcopy(layer), "spconv")


def forward_backward(layer, x_coords, feats, probe_seed=3, stride=1):
    feats = feats.clone().requires_grad_(True)
    x = SparseTensor(x_coords, feats if stride == 1 else torch.zeros(len(x_coords), 1))
    if stride != 1:
        # features on the coarse level, whose site order is backend-specific: built by that backend's down conv
        down = Conv3dDown(1, 1)
        if layer.backend_impl is not None:
            use_backend(down, "spconv")
        coarse = down(x)
        x = coarse.replace(feats[: len(coarse)])
    out = layer(x)
    probe = torch.randn(out.feats.shape, generator=torch.Generator().manual_seed(probe_seed))
    (out.feats * probe).sum().backward()
    return out, feats.grad, layer.weight.grad


def sort_by_site(coords, *tensors):
    order = torch.argsort(coords[:, 0].long() * 10**6 + coords[:, 1].long() * 10**4 + coords[:, 2].long() * 100
                          + coords[:, 3].long())
    return [coords[order]] + [t[order] for t in tensors]


def test_submanifold_conv_agrees_with_spconv():
    torch.manual_seed(0)
    coords = random_sites(20, grid=10)
    feats = torch.randn(len(coords), 6)
    ours, theirs = both_backends(SubmanifoldConv3d(6, 5))
    out_a, gf_a, gw_a = forward_backward(ours, coords, feats)
    out_b, gf_b, gw_b = forward_backward(theirs, coords, feats)
    assert torch.equal(out_a.coords, out_b.coords)
    assert relative_error(out_b.feats.detach(), out_a.feats.detach()) < 1e-5
    assert relative_error(gf_b, gf_a) < 1e-5 and relative_error(gw_b, gw_a) < 1e-5


def test_downsampling_conv_agrees_with_spconv_on_the_same_sites():
    torch.manual_seed(1)
    coords = random_sites(21, grid=10)  # 10 is not a multiple of 16: no upper-border site may be lost
    feats = torch.randn(len(coords), 4)
    ours, theirs = both_backends(Conv3dDown(4, 3))
    out_a, gf_a, gw_a = forward_backward(ours, coords, feats, probe_seed=4)
    x = SparseTensor(coords, feats.clone().requires_grad_(True))
    out_b = theirs(x)
    assert len(out_b) == len(out_a)
    sites_a, feats_a = sort_by_site(out_a.coords, out_a.feats.detach())
    sites_b, feats_b = sort_by_site(out_b.coords, out_b.feats.detach())
    assert torch.equal(sites_a, sites_b)
    assert relative_error(feats_b, feats_a) < 1e-5
    # same upstream gradient per site for both: gradients must agree too
    probe_a = torch.randn(out_a.feats.shape, generator=torch.Generator().manual_seed(4))
    lookup = {tuple(c): i for i, c in enumerate(out_a.coords.tolist())}
    probe_b = probe_a[[lookup[tuple(c)] for c in out_b.coords.tolist()]]
    (out_b.feats * probe_b).sum().backward()
    assert relative_error(x.feats.grad, gf_a) < 1e-5
    assert relative_error(theirs.weight.grad, gw_a) < 1e-5


def test_transposed_conv_agrees_with_spconv():
    torch.manual_seed(2)
    coords = random_sites(22, grid=10)
    results = []
    for backend in ("torch", "spconv"):
        torch.manual_seed(5)
        down, up = Conv3dDown(2, 3), ConvTranspose3dUp(3, 4)
        for layer in (down, up):
            use_backend(layer, backend)
        feats = torch.randn(len(coords), 2, requires_grad=True)
        out = up(down(SparseTensor(coords, feats)))
        assert torch.equal(out.coords, coords)
        out.feats.square().sum().backward()
        results.append((out.feats.detach(), feats.grad, down.weight.grad, up.weight.grad))
    for a, b in zip(*results):
        assert relative_error(b, a) < 1e-5


def test_whole_unet_agrees_with_spconv_and_shares_state_dict():
    torch.manual_seed(3)
    coords = random_sites(23, grid=12, occupancy=0.3)
    feats = torch.rand(len(coords), 1)
    ours = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=8))
    theirs = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=8, backend="spconv"))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    out_a = ours(SparseTensor(coords, feats))
    out_b = theirs(SparseTensor(coords, feats))
    assert relative_error(out_b.detach(), out_a.detach()) < 1e-4
    probe = torch.randn(out_a.shape)
    (out_a * probe).sum().backward()
    (out_b * probe).sum().backward()
    grads_a = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        assert relative_error(param.grad, grads_a[name].grad) < 1e-3, name
    # and back: the spconv-trained state dict runs on the engine unchanged
    use_backend(theirs, "torch")
    assert torch.allclose(theirs(SparseTensor(coords, feats)), out_a, atol=1e-6)


def test_weight_layout_round_trip():
    weight = torch.randn(27, 4, 5)
    spconv_weight = to_spconv_weight(weight, 3)
    assert spconv_weight.shape == (5, 3, 3, 3, 4)
    # kernel offset (dx, dy, dz) = (1, -1, 0) is engine index (2 * 3 + 0) * 3 + 1 = 19
    assert torch.equal(spconv_weight[:, 2, 0, 1, :], weight[19].t())
    assert torch.equal(from_spconv_weight(spconv_weight), weight)


def test_spconv_refuses_more_than_one_cpu_thread():
    layer = use_backend(SubmanifoldConv3d(2, 2), "spconv")
    coords = random_sites(24)
    torch.set_num_threads(2)
    with pytest.raises(SlidrError, match="one thread"):
        layer(SparseTensor(coords, torch.randn(len(coords), 2)))
