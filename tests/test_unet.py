"""SR-UNet backbone: architecture (parameter count from the published widths), shapes, gradients, batch independence."""

from __future__ import annotations

import pytest
import torch

from slidr.config import BackboneConfig, ConfigError
from slidr.models.sparse import SparseTensor
from slidr.models.unet import PRESETS, build_backbone
from test_sparse import one_thread  # noqa: F401 - autouse fixture: one torch thread


def expected_parameters(stem, planes, blocks, in_channels, out_channels):
    """Parameter count of Res16UNet from its table, computed independently of the model code."""
    conv = lambda k, cin, cout: k**3 * cin * cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, in_channels, stem) + bn(stem)

    def stage(cin, c, n):
        count = 0
        for i in range(n):
            first_in = cin if i == 0 else c
            count += conv(3, first_in, c) + bn(c) + conv(3, c, c) + bn(c)
            if first_in != c:
                count += conv(1, first_in, c) + bn(c)
        return count

    width = stem
    skips = [stem]
    for level in range(4):
        total += conv(2, width, width) + bn(width) + stage(width, planes[level], blocks[level])
        width = planes[level]
        skips.append(width)
    skips.pop()
    for level in range(4, 8):
        total += conv(2, width, planes[level]) + bn(planes[level])
        skip = skips.pop()
        total += stage(planes[level] + skip, planes[level], blocks[level])
        width = planes[level]
    return total + width * out_channels + out_channels


def small_scan(seed: int, batch: int = 2, grid: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, grid, grid, grid, generator=generator) < 0.35
    coords = occupied.nonzero().to(torch.int32)
    coords[:, 1:] -= 5  # negative coordinates, as cylindrical azimuth and z give
    return coords


def test_minkunet34_has_the_published_size():
    model = build_backbone(BackboneConfig(name="minkunet34", in_channels=1, out_channels=64))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(32, (32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2), 1, 64)
    assert 37.5e6 < count < 38.5e6
    assert model.feature_channels == 96
    assert isinstance(model.final, torch.nn.Linear) and model.final.in_features == 96


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_its_table(name):
    preset = PRESETS[name]
    model = build_backbone(BackboneConfig(name=name, in_channels=3, out_channels=5))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(preset.stem, preset.planes, preset.blocks, 3, 5)
    bn_momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)}
    assert bn_momenta == {0.05, 0.1}  # residual blocks' own batch norms: 0.1 (tests/test_protocol.py)
    model = build_backbone(BackboneConfig(name=name, bn_momentum=0.02, block_bn_momentum=0.3))
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)} == {0.02, 0.3}


def test_forward_shapes_normalisation_and_backward():
    torch.manual_seed(0)
    coords = small_scan(1)
    feats = torch.rand(coords.shape[0], 1)
    model = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=8, normalize_output=True))
    out = model(SparseTensor(coords, feats))
    assert out.shape == (coords.shape[0], 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(coords.shape[0]), atol=1e-5)
    features = model.forward_features(SparseTensor(coords, feats))
    assert features.shape == (coords.shape[0], 48)
    assert torch.allclose(torch.nn.functional.normalize(model.final(features), dim=1), out, atol=1e-5)
    (out[:, 0] * torch.arange(len(out))).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_unnormalised_output_and_replaced_final_layer():
    coords = small_scan(2)
    model = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=4, normalize_output=False))
    model.final = torch.nn.Linear(model.feature_channels, 17)  # what downstream training does
    out = model(SparseTensor(coords, torch.rand(coords.shape[0], 1)))
    assert out.shape == (coords.shape[0], 17)
    assert not torch.allclose(out.norm(dim=1), torch.ones(len(out)))


def test_scans_do_not_mix_in_eval_mode():
    torch.manual_seed(3)
    coords = small_scan(3)
    feats = torch.rand(coords.shape[0], 1)
    model = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=6)).eval()
    with torch.no_grad():
        together = model(SparseTensor(coords, feats))
        second = coords[:, 0] == 1
        alone_coords = coords[second].clone()
        alone_coords[:, 0] = 0
        alone = model(SparseTensor(alone_coords, feats[second]))
    assert torch.allclose(together[second], alone, atol=1e-5)


def test_unknown_backend_or_name_is_a_config_error():
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="minkunet99"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="minkunet14_half", backend="cuda-magic"))  # type: ignore[arg-type]
