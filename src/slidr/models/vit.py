"""Vision transformers used as image teachers: DINO's ViT-S/16 (this module) and DINOv2's (``dinov2.py``).

One pre-norm ViT serves both families; their state_dict keys are those of the authors' releases (and of timm's
files). What tells them apart is part of the architecture, as in the authors' code: DINOv2 blocks scale each
residual branch by a learnt per-channel ``gamma`` (LayerScale, ``ls1`` / ``ls2``), and DINOv2 interpolates its
position embeddings with its own rule (see :meth:`VisionTransformer.interpolated_pos_embed`).

Features: ``forward_features`` gives the patch tokens of the last block, or of the last ``layers`` blocks
concatenated along channels (earliest first), each through the final LayerNorm (``final_norm``) or not (ScaLR's
``x_pre_norm``); class and register tokens are dropped. Inputs whose sides are not multiples of the patch size are
zero-padded symmetrically (centre padding, as DINOv2's own dense heads do), so the map has ``ceil(H / patch) x
ceil(W / patch)`` cells.

Position embeddings, learnt for a square patch grid (14 x 14 for ViT-S/16 at 224 px), are resampled bicubically
to the grid of the input (224x416 -> 14x26). DINO's own code passes a scale factor nudged by 0.1 patch; ViT-S/16
here gives the target size directly (``interpolate_offset=0``), which samples the same grid without that
workaround (the two differ by a fraction of a patch in the sampling positions). DINOv2 models replicate their
release exactly (``dinov2.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidr.errors import ConfigError
from slidr.models import IMAGE_ENCODERS


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale: head_dim ** -0.5, as DINO
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Learnt per-channel scale of a residual branch (CaiT); DINOv2's ``ls1`` / ``ls2`` with parameter ``gamma``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))  # DINOv2's hub models are built with init_values=1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: bool = False) -> None:
        super().__init__()
        # registration order = state_dict order of the releases: norm1, attn, ls1, norm2, mlp, ls2
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a class token; ``forward_features`` gives the patch tokens as a feature map.

    Parameters
    ----------
    patch_size, embed_dim, depth, num_heads, mlp_ratio : architecture (defaults: ViT-S/16).
    pretrain_grid : int
        Side of the patch grid the position embeddings are stored for (14 for 224x224 at patch 16).
    num_classes : int
        Size of a ``head`` classifier on the class token (timm's files have one); 0 builds none (DINO).
    layer_scale : bool
        LayerScale on both residual branches of every block (DINOv2).
    interpolate_offset, interpolate_antialias : float, bool
        How position embeddings are resampled to another grid; see :meth:`interpolated_pos_embed`.
    layers : int
        ``forward_features`` concatenates the patch tokens of the last ``layers`` blocks (1: the last block only);
        ``out_channels`` is ``layers * embed_dim``.
    final_norm : bool
        Each of those block outputs goes through the final LayerNorm ``norm`` (False: ScaLR's pre-norm features).
    """

    #: tokens before the patch tokens: the class token (DINOv2 with registers adds its registers)
    num_prefix_tokens = 1

    def __init__(self, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, pretrain_grid: int = 14, num_classes: int = 0, *, layer_scale: bool = False,
                 interpolate_offset: float = 0.0, interpolate_antialias: bool = False, layers: int = 1,
                 final_norm: bool = True) -> None:
        super().__init__()
        if not 1 <= layers <= depth:
            raise ConfigError(f"image.layers must be between 1 and the {depth} blocks of the encoder, got {layers}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.layers = layers
        self.final_norm = final_norm
        self.out_channels = embed_dim * layers
        self.output_stride = patch_size
        self.pretrain_grid = pretrain_grid
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if num_classes > 0:
            self.head = nn.Linear(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, 1 + grid_h * grid_w, D): the class position embedding, then the patch grid resampled bicubically.

        The stored grid is returned as is when the input grid is that size. Otherwise: with ``interpolate_offset``
        0 the target size is given directly; else (DINO, DINOv2 without registers: 0.1) the scale factors are
        ``(grid + offset) / stored grid``, which also sets the sampling positions. ``interpolate_antialias``
        low-pass filters when shrinking (DINOv2 with registers). Computed in float32, returned in the stored dtype.
        """
        stored = self.pretrain_grid
        if (grid_h, grid_w) == (stored, stored):
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        grid = patch_pos.reshape(1, stored, stored, self.embed_dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((grid_h + self.interpolate_offset) / stored, (grid_w + self.interpolate_offset) / stored)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, self.embed_dim)
        return torch.cat([cls_pos, patch_pos], dim=1).to(self.pos_embed.dtype)

    def pad_to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, ceil(H / patch) * patch, ceil(W / patch) * patch), zeros split evenly around."""
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        if not pad_h and not pad_w:
            return x
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), sides multiples of the patch -> (B, prefix + h * w, D) tokens entering the first block."""
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.patch_embed(x)], dim=1)
        return tokens + self.interpolated_pos_embed(grid_h, grid_w)

    def block_outputs(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """(B, 3, H, W), sides multiples of the patch -> the tokens after each of the ``last`` last blocks."""
        tokens = self.embed(x)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index >= len(self.blocks) - last:
                outputs.append(tokens)
        return outputs

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, prefix + h * w, D) normalised output tokens of the last block (class token first)."""
        return self.norm(self.block_outputs(self.pad_to_patches(x), last=1)[0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, layers * D, ceil(H / patch), ceil(W / patch)): patch tokens as a map (see module)."""
        x = self.pad_to_patches(x)
        batch, grid_h, grid_w = x.shape[0], x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        maps = []
        for tokens in self.block_outputs(x, last=self.layers):
            if self.final_norm:
                tokens = self.norm(tokens)
            patches = tokens[:, self.num_prefix_tokens:]
            maps.append(patches.transpose(1, 2).reshape(batch, self.embed_dim, grid_h, grid_w))
        return torch.cat(maps, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The patch feature map, or the class logits when the model has a ``head``."""
        if not hasattr(self, "head"):
            return self.forward_features(x)
        return self.head(self.tokens(x)[:, 0])


@IMAGE_ENCODERS.register("vit_small", options=("layers", "final_norm"))
def vit_small(patch_size: int = 16, num_classes: int = 0, layers: int = 1, final_norm: bool = True
              ) -> VisionTransformer:
    """ViT-S: 384 channels, 12 blocks, 6 heads (DINO's ``vit_small``, timm's ``vit_small_patch16_224``)."""
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=12, num_heads=6, num_classes=num_classes,
                             layers=layers, final_norm=final_norm)
