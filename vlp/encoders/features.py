"""What a tower returns: the one data structure every objective reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from torch import Tensor


@dataclass
class Features:
    """Outputs of one tower on one view of the batch.

    ``embedding`` is the pooled feature after the projection head, in the shared space
    (not normalised: objectives decide). ``tokens`` are the backbone's per-token hidden
    states (image patches without prefix tokens, or text tokens); ``mask`` marks real
    tokens (True) versus padding and is all True for image patches.
    ``token_embeddings`` are the tokens passed through the same projection head, for
    token-level objectives (FILIP-style); they are computed only if someone asks.
    """

    embedding: Tensor
    pooled: Tensor
    tokens: Tensor
    mask: Tensor
    project: Callable[[Tensor], Tensor] = field(repr=False)

    @cached_property
    def token_embeddings(self) -> Tensor:
        return self.project(self.tokens)
