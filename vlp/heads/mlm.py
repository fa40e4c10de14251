"""BERT's masked-language-model prediction head (Devlin et al., 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLMHead(nn.Module):
    """Dense + GELU + LayerNorm (BERT's "transform"), then a linear map to the vocabulary.

    ``tied=True`` (BERT's default) has no output matrix of its own: :meth:`forward` takes
    the text tower's input embedding matrix and scores a hidden state against every token
    embedding, plus a per-token bias owned by the head. The matrix is read at call time
    and is not a submodule of the head, so it is stored, sharded and optimised once, with
    the tower (a frozen or LoRA-tuned embedding stays frozen; the head's bias still trains).
    ``tied=False`` owns a separate ``vocab_size x width`` decoder.
    """

    def __init__(self, width: int, vocab_size: int, tied: bool = True, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=layer_norm_eps))
        self.decoder = None if tied else nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        for module in (self.transform[0], self.decoder):
            if module is not None:
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.transform[0].bias)

    @property
    def tied(self) -> bool:
        return self.decoder is None

    def forward(self, hidden: Tensor, input_embeddings: Tensor | None = None) -> Tensor:
        """Vocabulary logits (..., vocab_size) for hidden states (..., width)."""
        if self.tied and input_embeddings is None:
            raise ValueError("A tied MLM head needs the text tower's input embedding matrix.")
        weight = input_embeddings if self.tied else self.decoder.weight
        return F.linear(self.transform(hidden), weight, self.bias)
