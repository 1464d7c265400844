"""DINOv2 formulas transcribed from the public releases, for comparison with slidr's own implementation.

- :func:`interpolate_pos_encoding`: facebookresearch/dinov2, ``dinov2/models/vision_transformer.py``,
  ``DinoVisionTransformer.interpolate_pos_encoding`` (kept literal, including its quirks: the input's dims 2 and 3
  are named ``w`` and ``h``, the stored table is returned untouched when the token count matches and the image is
  square, the scale factor is nudged by ``interpolate_offset`` when it is not 0).
- :func:`to_timm_layout`: huggingface/pytorch-image-models, ``timm/models/vision_transformer.py``,
  ``_convert_dinov2`` (what timm does to the release's files), for the MLP models (S/B).
- :func:`prepare_tokens`: ``DinoVisionTransformer.prepare_tokens_with_masks`` without masks.
"""

import math

import torch
import torch.nn.functional as F


def interpolate_pos_encoding(pos_embed, patch_size, height, width, interpolate_offset, interpolate_antialias):
    """pos_embed (1, 1 + M * M, D), an image of height x width -> (1, 1 + (height // p) * (width // p), D)."""
    w, h = height, width  # the release unpacks x.shape as (B, nc, w, h)
    npatch = (w // patch_size) * (h // patch_size)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    previous_dtype = pos_embed.dtype
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    M = int(math.sqrt(N))
    assert N == M * M
    kwargs = {}
    if interpolate_offset:
        sx = float(w0 + interpolate_offset) / M
        sy = float(h0 + interpolate_offset) / M
        kwargs["scale_factor"] = (sx, sy)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=interpolate_antialias,
        **kwargs,
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def to_timm_layout(state):
    """The release's state dict -> timm's (``_convert_dinov2``): mask_token dropped; with registers, reg_token,
    the class position folded into cls_token and the position table without class slot."""
    state = dict(state)
    out = {}
    state.pop("mask_token", None)
    if "register_tokens" in state:
        out["reg_token"] = state.pop("register_tokens")
        out["cls_token"] = state.pop("cls_token") + state["pos_embed"][:, 0]
        out["pos_embed"] = state.pop("pos_embed")[:, 1:]
    out.update(state)
    return out


def prepare_tokens(x, patch_embed_proj, cls_token, pos_embed, register_tokens, patch_size, offset, antialias):
    """(B, 3, H, W) -> (B, 1 + R + h * w, D): patches, class token, positions, then registers after the class."""
    batch, _, height, width = x.shape
    tokens = patch_embed_proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat((cls_token.expand(batch, -1, -1), tokens), dim=1)
    tokens = tokens + interpolate_pos_encoding(pos_embed, patch_size, height, width, offset, antialias)
    if register_tokens is not None:
        tokens = torch.cat((tokens[:, :1], register_tokens.expand(batch, -1, -1), tokens[:, 1:]), dim=1)
    return tokens
