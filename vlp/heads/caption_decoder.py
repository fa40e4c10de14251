"""Modules that objectives own: CoCa's attentional pooler and multimodal text decoder.

Built on torch's own attention layers (``nn.MultiheadAttention``,
``nn.TransformerDecoderLayer``), so the fused attention kernels apply.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionalPooler(nn.Module):
    """``n_queries`` learned queries cross-attend to a token sequence (Lee et al., 2019; CoCa, sec. 3.2).

    CoCa pools the image tokens twice: one query gives the contrastive image embedding,
    many queries give the tokens the captioning decoder attends to.
    """

    def __init__(self, context_dim: int, width: int, n_queries: int, heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, width) * width**-0.5)
        self.context_norm = nn.LayerNorm(context_dim)
        self.attention = nn.MultiheadAttention(width, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.output_norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, context_dim) -> (B, n_queries, width)."""
        context = self.context_norm(tokens)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attention(queries, context, context, need_weights=False)
        return self.output_norm(pooled)


class MultimodalTextDecoder(nn.Module):
    """CoCa's multimodal decoder: causal self-attention over text states, cross-attention to image tokens.

    Its input is the unimodal (causal) text tower's per-token hidden states, which already
    carry token and position information; its output is next-token logits. The image side
    is pooled first (``image_memory``) so generation pools once and decodes many times.
    """

    def __init__(
        self,
        text_width: int,
        image_width: int,
        vocab_size: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        image_queries: int = 64,
    ) -> None:
        super().__init__()
        # CoCa pools the image tokens into a fixed number of queries; 0 attends to every token (projected).
        self.image_adapter = (
            AttentionalPooler(image_width, width, image_queries, heads)
            if image_queries > 0
            else nn.Sequential(nn.LayerNorm(image_width), nn.Linear(image_width, width))
        )
        self.text_in = nn.Linear(text_width, width) if text_width != width else nn.Identity()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size)

    def image_memory(self, image_tokens: Tensor) -> Tensor:
        """(B, N, image_width) -> (B, image_queries or N, width): what the text cross-attends to."""
        return self.image_adapter(image_tokens)

    def forward(self, text_states: Tensor, memory: Tensor) -> Tensor:
        """(B, L, text_width) text states and (B, Q, width) memory -> (B, L, vocab_size) logits.

        Position t sees text positions <= t only; padding comes after the real tokens, so no
        real position attends to it and no padding mask is needed.
        """
        hidden = self.text_in(text_states)
        length = hidden.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=hidden.device, dtype=hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.lm_head(self.norm(hidden))
