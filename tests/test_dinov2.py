"""DINOv2 teachers: release / timm key layouts (independent key lists), loading, features, position embeddings.

ViT-S models are built once per module (random init) and copied; ViT-B models are built on the meta device where
only keys and shapes matter, so the file stays fast. Values are checked against transcriptions of the release
(``tests/reference/dinov2.py``) and a plain ``nn.MultiheadAttention`` re-implementation of a block.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference import dinov2 as reference
from slidr.config import ConfigError, ImageModelConfig, PretrainConfig, load_config
from slidr.errors import SlidrError
from slidr.models import IMAGE_ENCODERS
from slidr.models.dinov2 import dinov2_vitb14
from slidr.models.image import build_image_model, load_encoder_weights
from test_resnet import read_key_list

RELEASE_KEYS = {
    "dinov2_vits14": "dinov2_vits14_official_keys.txt",
    "dinov2_vitb14": "dinov2_vitb14_official_keys.txt",
    "dinov2_vits14_reg": "dinov2_vits14_reg4_official_keys.txt",
    "dinov2_vitb14_reg": "dinov2_vitb14_reg4_official_keys.txt",
}
TIMM_KEYS = {
    "dinov2_vits14": "timm_vit_small_patch14_dinov2_keys.txt",
    "dinov2_vitb14": "timm_vit_base_patch14_dinov2_keys.txt",
    "dinov2_vits14_reg": "timm_vit_small_patch14_reg4_dinov2_keys.txt",
    "dinov2_vitb14_reg": "timm_vit_base_patch14_reg4_dinov2_keys.txt",
}


@pytest.fixture(scope="module")
def small_models():
    """Randomly initialised ViT-S/14 without and with registers, built once (copy before changing them)."""
    torch.manual_seed(0)
    return {name: IMAGE_ENCODERS.get(name)().eval() for name in ("dinov2_vits14", "dinov2_vits14_reg")}


def _meta_encoder(name: str, **settings):
    with torch.device("meta"):
        return IMAGE_ENCODERS.get(name)(**settings)


def _random_state(key_list: str, broadcast: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of a key list: random values, or one random value per tensor
    broadcast to its shape (``broadcast``: tiny files for the ViT-B layouts)."""
    generator = torch.Generator().manual_seed(1)
    if broadcast:
        return {key: torch.randn(1, generator=generator).expand(shape) for key, shape in read_key_list(key_list)}
    return {key: torch.randn(shape, generator=generator) for key, shape in read_key_list(key_list)}


@pytest.mark.parametrize("name", list(RELEASE_KEYS))
def test_state_dict_is_the_releases(name):
    expected = read_key_list(RELEASE_KEYS[name])
    state = _meta_encoder(name).state_dict()
    assert list(state) == [key for key, _ in expected]
    for key, shape in expected:
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("layout", ["release", "timm"])
def test_release_and_timm_files_load_strictly(small_models, tmp_path, name, layout):
    state = _random_state((RELEASE_KEYS if layout == "release" else TIMM_KEYS)[name])
    torch.save(state, tmp_path / "weights.pth")
    encoder = copy.deepcopy(small_models[name])
    load_encoder_weights(encoder, tmp_path / "weights.pth")
    loaded = encoder.state_dict()
    for key, value in state.items():
        if layout == "timm" and key == "reg_token":
            key = "register_tokens"
        if layout == "timm" and key == "pos_embed" and name.endswith("_reg"):
            assert torch.equal(loaded[key][:, 1:], value) and not loaded[key][:, 0].any()  # class slot: 0
            continue
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", ["dinov2_vitb14", "dinov2_vitb14_reg"])
@pytest.mark.parametrize("layout", ["release", "timm"])
def test_vit_b_layouts_pass_the_strict_check(tmp_path, name, layout):
    state = _random_state((RELEASE_KEYS if layout == "release" else TIMM_KEYS)[name], broadcast=True)
    torch.save(state, tmp_path / "weights.pth")
    load_encoder_weights(_meta_encoder(name), tmp_path / "weights.pth")  # raises on any key or shape mismatch


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_timm_layout_gives_the_release_features(small_models, name):
    """timm's conversion of a release state dict (transcribed), adapted back, is the same function."""
    release = copy.deepcopy(small_models[name])
    with torch.no_grad():
        for parameter in (release.cls_token, release.pos_embed, release.register_tokens):
            if parameter is not None:
                parameter.normal_()
    from_timm = copy.deepcopy(small_models[name])
    from_timm.load_state_dict(from_timm.adapt_state_dict(reference.to_timm_layout(release.state_dict())))
    image = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        torch.testing.assert_close(from_timm.forward_features(image), release.forward_features(image),
                                   rtol=1e-5, atol=1e-5)


def test_training_checkpoint_with_teacher_backbone_prefix_loads(small_models, tmp_path):
    """DINOv2's own training checkpoints keep the backbone under ``teacher`` with a ``backbone.`` prefix."""
    state = _random_state(RELEASE_KEYS["dinov2_vits14"], broadcast=True)
    heads = {"dino_head.mlp.0.weight": torch.zeros(2048, 384)}
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **heads}}, tmp_path / "ckpt.pth")
    encoder = copy.deepcopy(small_models["dinov2_vits14"])
    load_encoder_weights(encoder, tmp_path / "ckpt.pth")
    assert torch.equal(encoder.blocks[11].ls2.gamma, state["blocks.11.ls2.gamma"])


def test_vit_s_file_into_vit_b_names_the_keys(tmp_path):
    torch.save(_random_state(RELEASE_KEYS["dinov2_vits14"], broadcast=True), tmp_path / "dinov2_vits14_pretrain.pth")
    with pytest.raises(SlidrError) as error:
        load_encoder_weights(_meta_encoder("dinov2_vitb14"), tmp_path / "dinov2_vits14_pretrain.pth")
    message = str(error.value)
    assert "dinov2_vits14_pretrain.pth" in message and "DinoV2VisionTransformer" in message
    assert "cls_token (1, 1, 384) != (1, 1, 768)" in message and "shape mismatches" in message


def test_registers_file_and_model_must_agree(tmp_path):
    torch.save(_random_state(RELEASE_KEYS["dinov2_vits14"], broadcast=True), tmp_path / "plain.pth")
    with pytest.raises(SlidrError, match="missing keys: register_tokens"):
        load_encoder_weights(_meta_encoder("dinov2_vits14_reg"), tmp_path / "plain.pth")
    torch.save(_random_state(TIMM_KEYS["dinov2_vits14_reg"], broadcast=True), tmp_path / "timm_reg.pth")
    with pytest.raises(SlidrError, match="unexpected keys: register_tokens"):
        load_encoder_weights(_meta_encoder("dinov2_vits14"), tmp_path / "timm_reg.pth")


@pytest.mark.parametrize("size,grid", [((224, 416), (16, 30)), ((518, 518), (37, 37)), ((97, 150), (7, 11))])
def test_feature_map_shapes(small_models, size, grid):
    with torch.no_grad():
        features = small_models["dinov2_vits14_reg"].forward_features(torch.randn(1, 3, *size))
    assert features.shape == (1, 384, *grid)
    with torch.device("meta"):
        base = dinov2_vitb14(layers=4)
        assert base.forward_features(torch.empty(2, 3, *size)).shape == (2, 4 * 768, *grid)
    assert (base.out_channels, base.output_stride) == (4 * 768, 14)


@pytest.mark.parametrize("grid", [(16, 30), (37, 37), (7, 11), (40, 52), (37, 20)])
@pytest.mark.parametrize("name,offset,antialias", [("dinov2_vits14", 0.1, False), ("dinov2_vits14_reg", 0.0, True)])
def test_position_embeddings_are_resampled_as_the_release_does(small_models, grid, name, offset, antialias):
    model = small_models[name]
    expected = reference.interpolate_pos_encoding(model.pos_embed, 14, grid[0] * 14, grid[1] * 14, offset, antialias)
    torch.testing.assert_close(model.interpolated_pos_embed(*grid), expected, rtol=0, atol=0)


def test_the_two_interpolation_rules_differ(small_models):
    """Guards the test above: the rules of the plain and the register models are not interchangeable."""
    table = small_models["dinov2_vits14"].pos_embed
    plain = reference.interpolate_pos_encoding(table, 14, 224, 420, 0.1, False)
    registers = reference.interpolate_pos_encoding(table, 14, 224, 420, 0.0, True)
    assert (plain - registers).abs().max() > 1e-2


def _reference_block(block, tokens):
    """One DINOv2 block written with nn.MultiheadAttention and functional layers, from the block's weights."""
    dim = tokens.shape[-1]
    attention = nn.MultiheadAttention(dim, block.attn.num_heads, batch_first=True)
    with torch.no_grad():
        attention.in_proj_weight.copy_(block.attn.qkv.weight)  # rows: queries, keys, values
        attention.in_proj_bias.copy_(block.attn.qkv.bias)
        attention.out_proj.weight.copy_(block.attn.proj.weight)
        attention.out_proj.bias.copy_(block.attn.proj.bias)
    normed = F.layer_norm(tokens, (dim,), block.norm1.weight, block.norm1.bias, eps=1e-6)
    tokens = tokens + block.ls1.gamma * attention(normed, normed, normed, need_weights=False)[0]
    normed = F.layer_norm(tokens, (dim,), block.norm2.weight, block.norm2.bias, eps=1e-6)
    hidden = F.gelu(F.linear(normed, block.mlp.fc1.weight, block.mlp.fc1.bias))
    return tokens + block.ls2.gamma * F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)


def _randomise_scales(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight", "norm.bias")):
                parameter.uniform_(0.5, 1.5)


def test_one_block_matches_a_multihead_attention_reimplementation(small_models):
    model = copy.deepcopy(small_models["dinov2_vits14_reg"])
    _randomise_scales(model)
    tokens = torch.randn(2, 1 + 4 + 12, 384)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[3](tokens), _reference_block(model.blocks[3], tokens),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,layers,final_norm", [("dinov2_vits14", 1, True), ("dinov2_vits14_reg", 3, False),
                                                    ("dinov2_vits14_reg", 2, True)])
def test_features_equal_the_release_pipeline_block_by_block(small_models, name, layers, final_norm):
    """Tokens as the release prepares them, the reference blocks, the last ``layers`` outputs concatenated."""
    model = copy.deepcopy(small_models[name])
    model.layers, model.final_norm, model.out_channels = layers, final_norm, layers * 384
    _randomise_scales(model)
    registers = model.register_tokens
    image = torch.randn(2, 3, 56, 98)
    with torch.no_grad():
        tokens = reference.prepare_tokens(image, model.patch_embed.proj, model.cls_token, model.pos_embed, registers,
                                          14, model.interpolate_offset, model.interpolate_antialias)
        outputs = []
        for block in model.blocks:
            tokens = _reference_block(block, tokens)
            outputs.append(tokens)
        maps = []
        for tokens in outputs[-layers:]:
            if final_norm:
                tokens = F.layer_norm(tokens, (384,), model.norm.weight, model.norm.bias, eps=1e-6)
            patches = tokens[:, 1 + (0 if registers is None else registers.shape[1]):]
            maps.append(patches.reshape(2, 4, 7, 384).permute(0, 3, 1, 2))
        expected = torch.cat(maps, dim=1)
        features = model.forward_features(image)
    assert features.shape == (2, layers * 384, 4, 7)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_inputs_are_centre_padded_to_whole_patches(small_models):
    model = small_models["dinov2_vits14"]
    image = torch.randn(1, 3, 53, 95)  # pads: 3 rows (1 above, 2 below), 3 columns (1 left, 2 right)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image),
                                   model.forward_features(F.pad(image, (1, 2, 1, 2))), rtol=0, atol=0)
        assert not torch.allclose(model.forward_features(image), model.forward_features(F.pad(image, (0, 3, 0, 3))))


def test_registers_take_part_in_attention_and_are_not_in_the_map(small_models):
    model = copy.deepcopy(small_models["dinov2_vits14_reg"])
    image = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert model.embed(image).shape == (1, 1 + 4 + 3 * 4, 384)
        before = model.forward_features(image)
        model.register_tokens.normal_()
        after = model.forward_features(image)
    assert before.shape == after.shape == (1, 384, 3, 4)
    assert (before - after).abs().max() > 1e-3


def test_mask_token_plays_no_part(small_models):
    model = copy.deepcopy(small_models["dinov2_vits14"])
    image = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        before = model.forward_features(image)
        model.mask_token.normal_()
        torch.testing.assert_close(model.forward_features(image), before, rtol=0, atol=0)


def test_layer_count_must_fit_the_encoder():
    for layers in (0, 13):
        with pytest.raises(ConfigError, match="image.layers"):
            _meta_encoder("dinov2_vits14", layers=layers)


def test_layer_settings_are_for_vit_encoders_only():
    config = load_config(PretrainConfig, overrides=["image.encoder=dinov2_vitb14_reg", "image.layers=4",
                                                    "image.final_norm=false"])
    assert (config.image.encoder, config.image.layers, config.image.final_norm) == ("dinov2_vitb14_reg", 4, False)
    with pytest.raises(ConfigError, match=r"image.layers and \S*image.final_norm apply to ViT encoders"):
        load_config(PretrainConfig, overrides=["image.encoder=resnet50", "image.layers=2"])
    with pytest.raises(ConfigError, match="image.layers"):
        load_config(PretrainConfig, overrides=["image.encoder=dinov2_vits14", "image.layers=0"])


def test_teacher_runs_end_to_end_on_a_nuscenes_sized_batch():
    torch.manual_seed(0)
    teacher = build_image_model(ImageModelConfig(encoder="dinov2_vits14_reg", layers=2, final_norm=False)).eval()
    assert teacher.encoder.out_channels == 768 and teacher.output_stride == 14
    with torch.no_grad():
        features = teacher(torch.randint(0, 256, (2, 3, 224, 416), dtype=torch.uint8))
    assert features.shape == (2, 64, 224, 416)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2, 224, 416))
