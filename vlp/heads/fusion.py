"""A small cross-attention fusion encoder: text tokens attend to image tokens (ALBEF, LightCLIP)."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.registry import ConfigError


class CrossAttentionFusion(nn.Module):
    """``depth`` pre-norm transformer layers over the text: self-attention among real text
    tokens, cross-attention to the image tokens, then an MLP; a final LayerNorm.

    This is the multimodal half of ALBEF's text encoder (there the top 6 BERT layers, each
    with a cross-attention) at the size of a head: the unimodal text tower stays as it is,
    and image-fused MLM trains it to carry what the image shows. Image tokens are projected
    to the text width first. Built from ``torch.nn.TransformerDecoderLayer`` (non-causal).
    """

    def __init__(self, text_width: int, image_width: int, depth: int = 1, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if text_width % num_heads:
            raise ConfigError(f"The fusion's num_heads {num_heads} does not divide the text width {text_width}; choose a divisor.")
        self.image_projection = nn.Linear(image_width, text_width)
        layer = nn.TransformerDecoderLayer(
            text_width, num_heads, int(text_width * mlp_ratio), dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(text_width))

    def forward(self, text_tokens: Tensor, text_mask: Tensor, image_tokens: Tensor, image_mask: Tensor | None = None) -> Tensor:
        """Fused text tokens (B, L, text_width); masks are True at real tokens."""
        return self.layers(
            text_tokens,
            self.image_projection(image_tokens),
            tgt_key_padding_mask=~text_mask.bool(),
            memory_key_padding_mask=None if image_mask is None else ~image_mask.bool(),
        )
