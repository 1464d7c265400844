"""ViT-S/16 image encoder whose state_dict keys are those of the DINO release and timm's vit_small_patch16_224.

Position embeddings, learnt for a 14x14 patch grid (224x224 input), are interpolated bicubically to the grid of
the actual input (224x416 -> 14x26). DINO's own code interpolates with a scale factor nudged by 0.1 patch; here
the target size is given directly, which samples the same grid without that workaround (the two differ by a
fraction of a patch in the sampling positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a class token; ``forward_features`` gives the patch tokens as a feature map.

    Parameters
    ----------
    patch_size, embed_dim, depth, num_heads, mlp_ratio : architecture (defaults: ViT-S/16).
    pretrain_grid : int
        Side of the patch grid the position embeddings are stored for (14 for 224x224).
    num_classes : int
        Size of a ``head`` classifier on the class token (timm's files have one); 0 builds none (DINO).
    """

    def __init__(self, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, pretrain_grid: int = 14, num_classes: int = 0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = embed_dim
        self.output_stride = patch_size
        self.pretrain_grid = pretrain_grid
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
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
        """(1, 1 + grid_h * grid_w, D): the class position embedding, then the patch grid resampled bicubically."""
        if (grid_h, grid_w) == (self.pretrain_grid, self.pretrain_grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, self.pretrain_grid, self.pretrain_grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + h * w, D) normalised output tokens (class token first)."""
        batch, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"ViT input {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), self.patch_embed(x)], dim=1)
        tokens = tokens + self.interpolated_pos_embed(grid_h, grid_w)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H / patch, W / patch): the patch tokens (class token dropped) as a map."""
        batch, _, height, width = x.shape
        patches = self.tokens(x)[:, 1:]
        return patches.transpose(1, 2).reshape(batch, -1, height // self.patch_size, width // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The patch feature map, or the class logits when the model has a ``head``."""
        if not hasattr(self, "head"):
            return self.forward_features(x)
        return self.head(self.tokens(x)[:, 0])


@IMAGE_ENCODERS.register("vit_small")
def vit_small(patch_size: int = 16, num_classes: int = 0) -> VisionTransformer:
    """ViT-S: 384 channels, 12 blocks, 6 heads (DINO's ``vit_small``, timm's ``vit_small_patch16_224``)."""
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=12, num_heads=6, num_classes=num_classes)
