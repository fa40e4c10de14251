"""Light MAE-style decoders that put an encoder's visible tokens back on the patch grid and predict every patch.

``PatchDecoder`` is MAE's (pixels for MAE, joint-space features for CFM-ViT);
``TextGuidedPatchDecoder`` also attends to the text (SyCoCa's TG-MIM).
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vlp.registry import ConfigError


def on_grid(visible: Tensor, kept: Tensor, mask_token: Tensor, num_patches: int) -> Tensor:
    """(B, N, W): the mask token at every patch position, the visible tokens (B, K, W) at their indices ``kept`` (B, K)."""
    batch, _, width = visible.shape
    canvas = mask_token.to(visible.dtype).reshape(1, 1, width).expand(batch, num_patches, width)
    return canvas.scatter(1, kept.unsqueeze(-1).expand(-1, -1, width), visible)


class PatchDecoder(nn.Module):
    """MAE's decoder (He et al., 2022): visible tokens mapped to the decoder width, one learned
    mask token at every dropped position, fixed 2-D sin-cos positions, a few timm ``Block``s,
    a LayerNorm, and a linear head to ``out_dim`` per patch.
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
        visible = self.embed(tokens)
        grid = on_grid(visible, kept, self.mask_token, self.grid[0] * self.grid[1])
        return self.head(self.norm(self.blocks(grid + self.positions.to(visible.dtype))))


class TextGuidedPatchDecoder(nn.Module):
    """Kept patch tokens plus a learned [MASK] token at every hidden position, fixed 2-D sin-cos
    positions, ``depth`` pre-norm layers of self-attention over the patches and cross-attention
    to the text tokens, then a linear map to each patch's pixels.

    MAE's decoder (He et al., 2022) with the text as cross-attention memory: the text is what
    lets a patch the encoder never saw be predicted (Ma et al., 2024, SyCoCa's text-guided
    masked image modelling).
    """

    def __init__(
        self, image_width: int, text_width: int, grid: tuple[int, int], patch_pixels: int,
        width: int = 128, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % num_heads or width % 4:
            raise ConfigError(f"The decoder width {width} must be divisible by num_heads ({num_heads}) and by 4; change it.")
        self.grid = tuple(grid)
        self.embed = nn.Linear(image_width, width)
        self.text_projection = nn.Linear(text_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", build_sincos2d_pos_embed(list(self.grid), width), persistent=False)
        layer = nn.TransformerDecoderLayer(
            width, num_heads, int(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))
        self.predict = nn.Linear(width, patch_pixels)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, kept_tokens: Tensor, keep_indices: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """Predicted pixels (B, N, patch_pixels) of every patch, from the kept tokens (B, K, image_width)
        at grid positions ``keep_indices`` (B, K) and the text tokens (B, L, text_width)."""
        embedded = self.embed(kept_tokens)
        tokens = on_grid(embedded, keep_indices, self.mask_token, self.num_patches) + self.positions.to(embedded.dtype)
        decoded = self.layers(tokens, self.text_projection(text_tokens), memory_key_padding_mask=~text_mask.bool())
        return self.predict(decoded)
