"""What a tower returns: the one data structure every objective reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from torch import Tensor


@dataclass
class Features:
    """Outputs of one tower on one view of the batch, with the view's own metadata.

    ``embedding`` is the pooled feature after the projection head, in the shared space
    (not normalised: objectives decide). ``tokens`` are the backbone's per-token hidden
    states (image patches without prefix tokens, or text tokens); ``mask`` marks real
    tokens (True) versus padding and is all True for image patches.
    ``token_embeddings`` are the tokens passed through the same projection head, for
    token-level objectives (FILIP-style); they are computed only if someone asks.

    View metadata (set by the view that made these features, None/empty otherwise):
    ``kept`` (B, K) indices into the full patch grid of the patches the image tower saw,
    in the order of ``tokens`` (None: all patches, in grid order); ``positions_dropped``
    (B,) True for samples run without positional embeddings; ``layers`` the requested
    intermediate block outputs (B, K, width) without prefix tokens; ``input_ids`` the ids
    the text tower saw (e.g. with [MASK]s); ``meta`` anything else a view computes for its
    readers (e.g. ``meta["mlm_labels"]``).
    """

    embedding: Tensor
    pooled: Tensor
    tokens: Tensor
    mask: Tensor
    project: Callable[[Tensor], Tensor] = field(repr=False)
    kept: Tensor | None = None
    positions_dropped: Tensor | None = None
    layers: tuple[Tensor, ...] = ()
    input_ids: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def token_embeddings(self) -> Tensor:
        return self.project(self.tokens)
