"""DINOv2 image teachers: ViT-S/14 and ViT-B/14, with or without registers (Oquab et al. 2023; Darcet et al. 2024).

The architecture and the state_dict keys are those of the release (facebookresearch/dinov2,
``dinov2/models/vision_transformer.py``, built by ``dinov2/hub/backbones.py``): patch 14, LayerScale in every
block (``blocks.N.ls1.gamma`` / ``ls2.gamma``), LayerNorm eps 1e-6, qkv bias, GELU MLP of ratio 4, position
embeddings stored for a 37 x 37 grid (518 px) with a class position in front, an unused ``mask_token`` (iBOT
masking in training) and, for the ``_reg`` models, four ``register_tokens`` inserted after the class token once
the position embeddings are added (registers have none). Token order: [class, registers, patches].

Position embeddings are resampled to the input grid as the release does: bicubic with the scale factor
``(grid + 0.1) / 37`` and no antialiasing for the models without registers; bicubic to the target size with
antialiasing for the ``_reg`` models (``dinov2_vit*14_reg`` in ``backbones.py``). The 518 px grid is used as is.

Weight files (:func:`slidr.models.image.load_encoder_weights`): the release's ``dinov2_vit{s,b}14[_reg4]_pretrain.pth``
load as they are; timm's ``vit_{small,base}_patch14[_reg4]_dinov2.lvd142m`` files are converted on loading
(:meth:`DinoV2VisionTransformer.adapt_state_dict`): timm drops ``mask_token``, calls the registers ``reg_token``
and, for the register models, folds the class position embedding into ``cls_token`` and keeps a position
embedding without class slot (``no_embed_class``), which the conversion undoes exactly (class position 0).

Features: see :mod:`slidr.models.vit` (``layers`` last blocks, ``final_norm``, centre padding of inputs whose
sides are not multiples of 14: 224x416 gives a 16 x 30 map).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slidr.models import IMAGE_ENCODERS
from slidr.models.vit import VisionTransformer

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # 518 / 14
NUM_REGISTERS = 4


class DinoV2VisionTransformer(VisionTransformer):
    """The DINOv2 ViT; build it with :func:`dinov2_vits14` and friends.

    Parameters
    ----------
    embed_dim, num_heads : ViT-S (384, 6) or ViT-B (768, 12); 12 blocks either way.
    num_register_tokens : 0, or 4 for the ``_reg`` models.
    layers, final_norm : the features; see :class:`~slidr.models.vit.VisionTransformer`.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_register_tokens: int = 0, layers: int = 1,
                 final_norm: bool = True) -> None:
        with_registers = num_register_tokens > 0
        super().__init__(patch_size=PATCH_SIZE, embed_dim=embed_dim, depth=12, num_heads=num_heads,
                         pretrain_grid=PRETRAIN_GRID, layer_scale=True,
                         interpolate_offset=0.0 if with_registers else 0.1, interpolate_antialias=with_registers,
                         layers=layers, final_norm=final_norm)
        self.num_prefix_tokens = 1 + num_register_tokens
        # root parameters after cls_token and pos_embed, in the release's order: register_tokens, mask_token
        self.register_tokens: nn.Parameter | None = None
        if with_registers:
            self.register_tokens = nn.Parameter(torch.randn(1, num_register_tokens, embed_dim) * 1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # in the release's files; plays no part here

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + registers + h * w, D): registers go after the class token, without position."""
        tokens = super().embed(x)
        if self.register_tokens is None:
            return tokens
        registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in timm's DINOv2 layout rewritten in the release's; the release's layout passes unchanged.

        timm's layout is recognised by its ``reg_token`` key or by ``cls_token`` without ``mask_token``. Shapes are
        not checked here (the strict key check that follows names any mismatch).
        """
        if "reg_token" not in state and ("mask_token" in state or "cls_token" not in state):
            return state
        state = dict(state)
        if "reg_token" in state:
            state["register_tokens"] = state.pop("reg_token")
            pos_embed = state.get("pos_embed")
            if (pos_embed is not None and pos_embed.dim() == 3
                    and math.isqrt(pos_embed.shape[1]) ** 2 == pos_embed.shape[1]):
                # no class slot (timm's no_embed_class): its class position is already inside cls_token
                state["pos_embed"] = torch.cat([pos_embed.new_zeros(1, 1, pos_embed.shape[2]), pos_embed], dim=1)
        cls_token = state.get("cls_token")
        if cls_token is not None:  # (without it, the key check reports the file)
            # unused by the features; zeros, the release's initial value, so that the strict key check applies
            state.setdefault("mask_token", cls_token.new_zeros(1, cls_token.shape[-1]))
        return state


@IMAGE_ENCODERS.register("dinov2_vits14", options=("layers", "final_norm"))
def dinov2_vits14(layers: int = 1, final_norm: bool = True) -> DinoV2VisionTransformer:
    """DINOv2 ViT-S/14: 384 channels, 6 heads (release: ``dinov2_vits14``; timm: ``vit_small_patch14_dinov2``)."""
    return DinoV2VisionTransformer(384, 6, 0, layers, final_norm)


@IMAGE_ENCODERS.register("dinov2_vitb14", options=("layers", "final_norm"))
def dinov2_vitb14(layers: int = 1, final_norm: bool = True) -> DinoV2VisionTransformer:
    """DINOv2 ViT-B/14: 768 channels, 12 heads (release: ``dinov2_vitb14``; timm: ``vit_base_patch14_dinov2``)."""
    return DinoV2VisionTransformer(768, 12, 0, layers, final_norm)


@IMAGE_ENCODERS.register("dinov2_vits14_reg", options=("layers", "final_norm"))
def dinov2_vits14_reg(layers: int = 1, final_norm: bool = True) -> DinoV2VisionTransformer:
    """DINOv2 ViT-S/14 with 4 registers (release: ``dinov2_vits14_reg``; timm: ``vit_small_patch14_reg4_dinov2``)."""
    return DinoV2VisionTransformer(384, 6, NUM_REGISTERS, layers, final_norm)


@IMAGE_ENCODERS.register("dinov2_vitb14_reg", options=("layers", "final_norm"))
def dinov2_vitb14_reg(layers: int = 1, final_norm: bool = True) -> DinoV2VisionTransformer:
    """DINOv2 ViT-B/14 with 4 registers (release: ``dinov2_vitb14_reg``; timm: ``vit_base_patch14_reg4_dinov2``)."""
    return DinoV2VisionTransformer(768, 12, NUM_REGISTERS, layers, final_norm)
