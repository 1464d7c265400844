"""ResNet encoders: torchvision's state_dict layout (checked against an independent key list) and strides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slidr.models.resnet import resnet18, resnet50

DATA = Path(__file__).parent / "data"


def read_key_list(name: str) -> list[tuple[str, tuple[int, ...] | None]]:
    """(key, shape or None) per line of a tests/data key list; '-' is a scalar."""
    entries = []
    for line in (DATA / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, *shape = line.split()
        if shape:
            entries.append((key, () if shape[0] == "-" else tuple(int(v) for v in shape[0].split(","))))
        else:
            entries.append((key, None))
    return entries


@pytest.mark.parametrize("dilated", [False, True])
def test_resnet50_state_dict_is_torchvisions(dilated):
    expected = read_key_list("resnet50_torchvision_keys.txt")
    state = resnet50(dilated=dilated, num_classes=2).state_dict()  # the reference file has a 2-class fc
    assert list(state) == [key for key, _ in expected]
    for key, shape in expected:
        assert tuple(state[key].shape) == shape, key


def test_resnet18_state_dict_is_torchvisions():
    expected = [key for key, _ in read_key_list("resnet18_torchvision_keys.txt")]
    assert list(resnet18(num_classes=1000).state_dict()) == expected
    assert list(resnet18().state_dict()) == [key for key in expected if not key.startswith("fc.")]


@pytest.mark.parametrize(
    "builder, dilated, stride, channels, height",
    [(resnet50, True, 4, 2048, 32), (resnet50, False, 32, 2048, 64), (resnet18, False, 32, 512, 64),
     (resnet18, True, 4, 512, 32)],
)
def test_output_stride_and_channels(builder, dilated, stride, channels, height):
    model = builder(dilated=dilated).eval()
    assert model.output_stride == stride and model.out_channels == channels
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, height, 96))
    assert features.shape == (1, channels, height // stride, 96 // stride)


def test_dilation_follows_torchvision_semantics():
    """Stage 2-4 strides become dilations 2, 4, 8; the first block of a stage keeps the previous dilation."""
    model = resnet50(dilated=True)
    assert model.layer2[0].conv2.stride == (1, 1) and model.layer2[0].conv2.dilation == (1, 1)
    assert model.layer2[1].conv2.dilation == (2, 2)
    assert model.layer3[0].conv2.dilation == (2, 2) and model.layer3[1].conv2.dilation == (4, 4)
    assert model.layer4[0].conv2.dilation == (4, 4) and model.layer4[2].conv2.dilation == (8, 8)
    assert model.layer4[2].conv2.padding == (8, 8)
    assert model.layer4[0].downsample[0].stride == (1, 1)
    plain = resnet50(dilated=False)
    assert plain.layer4[0].conv2.stride == (2, 2) and plain.layer4[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("builder", [resnet18, resnet50])
def test_dilated_network_is_the_strided_one_computed_at_every_position(builder):
    """"A trous" identity: with the same weights, the strided output equals the dilated output sampled every 8
    pixels. It holds only if the strided convolution of each stage's first block keeps the previous dilation, as
    torchvision does (and, in ResNet-18, the convolution after it takes the new one)."""
    strided, dilated = builder(dilated=False).eval(), builder(dilated=True).eval()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        coarse, dense = strided.forward_features(x), dilated.forward_features(x)
    assert dense.shape[-2:] == (8, 16) and coarse.shape[-2:] == (1, 2)
    torch.testing.assert_close(coarse, dense[:, :, ::8, ::8], rtol=1e-4, atol=1e-4)


def test_checkpoint_saved_from_the_model_loads_back(tmp_path):
    model = resnet50(dilated=True)
    with torch.no_grad():
        model.layer3[2].bn2.running_mean.uniform_()
    torch.save(model.state_dict(), tmp_path / "r50.pt")
    other = resnet50(dilated=False)
    other.load_state_dict(torch.load(tmp_path / "r50.pt", weights_only=True))
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
