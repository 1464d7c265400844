"""The image teacher: shapes per variant, weight files (torchvision, MoCo, DINO, prefixes, errors), freezing."""

from __future__ import annotations

import logging

import pytest
import torch

from slidr.config import ImageModelConfig
from slidr.errors import SlidrError
from slidr.models.image import IMAGENET_MEAN, IMAGENET_STD, build_encoder, build_image_model
from slidr.models.resnet import resnet18


@pytest.mark.parametrize(
    "encoder, dilated, height, width, stride",
    [("resnet50", True, 32, 64, 4), ("resnet50", False, 64, 96, 32), ("resnet18", False, 64, 96, 32),
     ("vit_small", True, 224, 416, 16), ("convnet_small", True, 64, 96, 4)],
)
def test_head_upsamples_to_the_input_size(encoder, dilated, height, width, stride):
    model = build_image_model(ImageModelConfig(encoder=encoder, dilated=dilated)).eval()
    assert model.output_stride == stride
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    assert out.shape == (1, 64, height, width)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1, height, width))


def test_head_is_a_1x1_conv_then_corner_aligned_bilinear_upsampling():
    model = build_image_model(ImageModelConfig(encoder="convnet_small", normalize_output=False)).eval()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        coarse = model.head(model.encoder.forward_features(x))  # (2, 64, 8, 10)
        out = model(x)
    # align_corners=True (the release's nn.Upsample): corners and every (31/7, 39/9)-th pixel are the coarse values
    torch.testing.assert_close(out[:, :, 0, 0], coarse[:, :, 0, 0])
    torch.testing.assert_close(out[:, :, -1, -1], coarse[:, :, -1, -1])
    torch.testing.assert_close(out[:, :, 31, 0], coarse[:, :, 7, 0])


def test_uint8_images_are_imagenet_normalised_inside():
    model = build_image_model(ImageModelConfig(encoder="convnet_small")).eval()
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    normalised = (pixels.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), model(normalised))


def test_encoder_stays_frozen_in_eval_mode_while_the_head_trains():
    model = build_image_model(ImageModelConfig(encoder="resnet18", dilated=False))
    running_mean = model.encoder.bn1.running_mean.clone()
    encoder_weights = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    assert model.training and model.head.training and not model.encoder.training
    assert not any(module.training for module in model.encoder.modules())
    assert all(not p.requires_grad for p in model.encoder.parameters())

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    head_before = model.head.weight.clone()
    loss = model(torch.randn(2, 3, 64, 64)).sum()
    loss.backward()
    optimizer.step()
    assert model.head.weight.grad is not None and not torch.equal(model.head.weight, head_before)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert torch.equal(model.encoder.bn1.running_mean, running_mean)  # BatchNorm statistics did not move
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_weights[key]), key


def test_unfrozen_encoder_trains():
    model = build_image_model(ImageModelConfig(encoder="convnet_small", freeze_encoder=False)).train()
    assert model.encoder.training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_registered_input_statistics_and_weight_prefixes(tmp_path):
    """An encoder registered with its own normalisation sees its statistics whatever the input layout, and a
    registered key prefix is stripped from weight files without image.weights_prefix."""
    from slidr.models import IMAGE_ENCODERS
    from slidr.models.image import ConvNetSmall, ImageTeacher

    unit = (0.5, 0.5, 0.5)
    IMAGE_ENCODERS.register("convnet_unit_range", ConvNetSmall, mean=unit, std=unit, weight_prefixes=("student.",))
    try:
        torch.manual_seed(0)
        source = ConvNetSmall()
        torch.save({f"student.{k}": v for k, v in source.state_dict().items()}, tmp_path / "student.pt")
        cfg = ImageModelConfig(encoder="convnet_unit_range", weights=str(tmp_path / "student.pt"))
        model = build_image_model(cfg).eval()
        _assert_same_encoder(source, model.encoder)
    finally:
        IMAGE_ENCODERS.unregister("convnet_unit_range")
    plain = ImageTeacher(source.eval()).eval()  # ImageNet statistics: float input reaches the encoder unchanged
    plain.head.load_state_dict(model.head.state_dict())
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    imagenet = (pixels.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    unit_range = (pixels.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = plain(unit_range)
        torch.testing.assert_close(model(pixels), expected)
        torch.testing.assert_close(model(imagenet), expected)
        assert not torch.allclose(plain(imagenet), expected, atol=1e-3)  # the statistics matter


def test_no_weights_warns_once(caplog):
    from slidr.utils import log

    log._said.clear()
    with caplog.at_level(logging.WARNING, logger="slidr"):
        build_image_model(ImageModelConfig(encoder="convnet_small"))
        build_image_model(ImageModelConfig(encoder="convnet_small"))
    warnings = [r for r in caplog.records if "distillation quality will be poor" in r.getMessage()]
    assert len(warnings) == 1


def _reference_encoder(encoder="resnet18", dilated=False):
    torch.manual_seed(0)
    model = build_encoder(ImageModelConfig(encoder=encoder, dilated=dilated))
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return model


def _assert_same_encoder(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_checkpoint_saved_from_the_encoder_loads(tmp_path):
    source = _reference_encoder()
    torch.save(source.state_dict(), tmp_path / "encoder.pt")
    model = build_image_model(ImageModelConfig(encoder="resnet18", dilated=False, weights=str(tmp_path / "encoder.pt")))
    _assert_same_encoder(source, model.encoder)


def test_torchvision_file_with_classifier_and_without_num_batches_tracked_loads(tmp_path):
    """Old torchvision files (e.g. resnet50-19c8e357.pth) have an fc and no num_batches_tracked entries."""
    source = _reference_encoder()
    classifier = resnet18(num_classes=1000)
    classifier.load_state_dict(source.state_dict(), strict=False)
    state = {k: v for k, v in classifier.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet18-torchvision.pth")
    model = build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "resnet18-torchvision.pth")))
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(model.encoder.state_dict()[key], value), key


def test_moco_v2_checkpoint_loads_with_automatic_or_explicit_prefix(tmp_path):
    source = _reference_encoder()
    with_fc = {**source.state_dict(), "fc.0.weight": torch.zeros(2048, 512), "fc.2.weight": torch.zeros(128, 2048)}
    state = {f"module.encoder_q.{k}": v for k, v in with_fc.items()}
    state.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in with_fc.items()})
    state["module.queue"] = torch.zeros(128, 16)
    checkpoint = {"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}}}
    torch.save(checkpoint, tmp_path / "moco_v2.pth.tar")
    for prefix in (None, "module.encoder_q."):
        model = build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "moco_v2.pth.tar"),
                                                   weights_prefix=prefix))
        _assert_same_encoder(source, model.encoder)


def test_dino_and_timm_vit_files_load(tmp_path):
    source = _reference_encoder("vit_small")
    torch.save(source.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    timm_state = {**source.state_dict(), "head.weight": torch.zeros(1000, 384), "head.bias": torch.zeros(1000)}
    torch.save(timm_state, tmp_path / "vit_small_patch16_224.pth")
    for name in ("dino_deitsmall16_pretrain.pth", "vit_small_patch16_224.pth"):
        model = build_image_model(ImageModelConfig(encoder="vit_small", weights=str(tmp_path / name)))
        _assert_same_encoder(source, model.encoder)


def test_wrong_keys_error_lists_them(tmp_path):
    state = _reference_encoder().state_dict()
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    del state["layer2.1.conv2.weight"]
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(SlidrError) as error:
        build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "bad.pt")))
    message = str(error.value)
    assert "bad.pt" in message and "layer2.1.conv2.weight" in message and "layer9.0.conv1.weight" in message
    assert "conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7)" in message


def test_resnet50_file_for_a_resnet18_teacher_errors(tmp_path):
    torch.save(_reference_encoder("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(SlidrError, match="unexpected keys: .*layer1.0.conv3.weight"):
        build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "r50.pt")))


def test_missing_unreadable_and_unprefixed_files_error(tmp_path):
    with pytest.raises(SlidrError, match="does not exist"):
        build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "absent.pt")))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SlidrError, match="cannot read"):
        build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "garbage.pt")))
    torch.save(_reference_encoder().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(SlidrError, match="weights_prefix 'module.'"):
        build_image_model(ImageModelConfig(encoder="resnet18", weights=str(tmp_path / "plain.pt"),
                                           weights_prefix="module."))
