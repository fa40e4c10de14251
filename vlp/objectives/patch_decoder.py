"""MAE's light decoder, shared by pixel (MAE) and feature (CFM-ViT) reconstruction objectives."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class PatchDecoder(nn.Module):
    """Puts the encoder's visible tokens back on the patch grid and predicts every patch.

    The visible tokens are mapped to the decoder width, the dropped positions get one
    learned mask token, fixed 2-D sin-cos positions are added (as in MAE), a few timm
    ``Block``s and a LayerNorm follow, and a linear head maps to ``out_dim`` per patch.
    """

    def __init__(self, in_width: int, grid: tuple[int, int], out_dim: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", build_sincos2d_pos_embed(list(self.grid), width).unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def forward(self, tokens: Tensor, kept: Tensor) -> Tensor:
        """(B, K, in_width) tokens of the patches ``kept`` (B, K) -> (B, N, out_dim) for the whole grid."""
        batch, width = tokens.shape[0], self.mask_token.shape[-1]
        num_patches = self.grid[0] * self.grid[1]
        visible = self.embed(tokens)
        grid = self.mask_token.to(visible.dtype).expand(batch, num_patches, width)
        grid = grid.scatter(1, kept.unsqueeze(-1).expand(-1, -1, width), visible)
        x = self.blocks(grid + self.positions.to(visible.dtype))
        return self.head(self.norm(x))
