"""ViT-S/16: DINO / timm state_dict layout (independent key list), patch-grid output, position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slidr.models.vit import vit_small
from test_resnet import read_key_list


def test_state_dict_is_dinos_and_timms():
    expected = read_key_list("vit_small_dino_keys.txt")
    state = vit_small(num_classes=1000).state_dict()
    assert list(state) == [key for key, _ in expected] + ["head.weight", "head.bias"]  # timm's file layout
    for key, shape in expected:
        assert tuple(state[key].shape) == shape, key


def test_patch_feature_map_of_a_224x416_image_is_14x26():
    model = vit_small().eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 224, 416))
    assert features.shape == (1, 384, 14, 26)
    assert model.output_stride == 16


def test_position_embeddings_are_kept_at_224_and_resampled_otherwise():
    model = vit_small()
    assert model.interpolated_pos_embed(14, 14) is model.pos_embed
    resized = model.interpolated_pos_embed(14, 26)
    assert resized.shape == (1, 1 + 14 * 26, 384)
    torch.testing.assert_close(resized[:, 0], model.pos_embed[:, 0])  # class token untouched
    # a constant grid stays constant under bicubic resampling
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.5
    torch.testing.assert_close(model.interpolated_pos_embed(7, 20)[:, 1:], torch.full((1, 140, 384), 0.5))


def test_feature_map_is_the_normalised_patch_tokens_in_raster_order():
    """Cross-check the attention block against a hand-written softmax attention on a tiny model."""
    model = vit_small().eval()
    model.blocks = model.blocks[:1]
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        features = model.forward_features(x)
        block = model.blocks[0]
        tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], 1)
        tokens = tokens + model.interpolated_pos_embed(2, 3)
        h = block.norm1(tokens)
        q, k, v = block.attn.qkv(h).reshape(2, 7, 3, 6, 64).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        tokens = tokens + block.attn.proj((attention @ v).transpose(1, 2).reshape(2, 7, 384))
        tokens = tokens + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(tokens))))
        expected = model.norm(tokens)[:, 1:]  # patches in raster order: (row 0: 3 patches), (row 1: 3 patches)
    assert features.shape == (2, 384, 2, 3)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), expected, rtol=1e-4, atol=1e-5)


def test_sides_not_multiple_of_16_are_centre_padded_and_last_blocks_concatenate():
    model = vit_small(layers=2, final_norm=False).eval()
    image = torch.randn(1, 3, 100, 150)  # padded to 112 x 160: 6 rows above, 6 below; 5 columns left, 5 right
    with torch.no_grad():
        features = model.forward_features(image)
        padded = model.block_outputs(F.pad(image, (5, 5, 6, 6)), last=2)
    assert features.shape == (1, 768, 7, 10) and model.out_channels == 768
    expected = torch.cat([tokens[:, 1:].transpose(1, 2).reshape(1, 384, 7, 10) for tokens in padded], dim=1)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
