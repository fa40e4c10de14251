"""Long-CLIP's knowledge-preserved stretching of a CLIP text tower's positions (Zhang et al., 2024).

The first ``keep`` positions, which CLIP trained well, stay exactly as they were (and
frozen); every later position is linearly interpolated ``factor`` times finer, and the
last trained position is extrapolated along its final step. With CLIP's 77 positions,
``keep=20`` and ``factor=4`` this gives 4·77 − 3·20 = 248 positions, as the paper.
A caption of at most ``keep`` tokens therefore encodes exactly as before stretching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.registry import ConfigError


def stretch_positions(table: Tensor, keep: int = 20, factor: int = 4) -> Tensor:
    """The stretched table: rows ``[:keep]`` unchanged, then ``factor`` interpolated rows per old row.

    Row ``keep + factor·i + j`` is ``(1 − j/factor)·old[keep+i] + (j/factor)·old[keep+i+1]``;
    past the last old row the line through the last two rows is continued.
    """
    length = table.shape[0]
    if not 0 < keep < length - 1:
        raise ConfigError(f"Long-CLIP keeps {keep} of {length} positions; keep must be between 1 and {length - 2}.")
    tail = table[keep:]
    following = torch.cat([tail[1:], 2 * tail[-1:] - tail[-2:-1]])  # the last row extrapolates one step
    steps = torch.arange(factor, dtype=table.dtype, device=table.device).view(1, factor, 1) / factor
    interpolated = (1 - steps) * tail.unsqueeze(1) + steps * following.unsqueeze(1)
    return torch.cat([table[:keep], interpolated.reshape(-1, table.shape[1])])


class StretchedPositionEmbedding(nn.Module):
    """A position table whose first ``keep`` rows are frozen (a buffer) and the rest trainable.

    Long-CLIP fine-tunes only the stretched positions so short texts keep CLIP's
    embedding; ``weight`` is the whole table, as ``nn.Embedding`` exposes it.
    """

    def __init__(self, table: Tensor, keep: int) -> None:
        super().__init__()
        self.register_buffer("kept", table[:keep].detach().clone())
        self.stretched = nn.Parameter(table[keep:].detach().clone())

    @property
    def weight(self) -> Tensor:
        return torch.cat([self.kept, self.stretched])

    def forward(self, position_ids: Tensor) -> Tensor:
        return F.embedding(position_ids, self.weight)


def stretch_text_tower(tower: nn.Module, keep: int = 20, factor: int = 4) -> int:
    """Stretch a transformers CLIP text tower in place; returns the new number of positions.

    Works for every tower whose ``backbone`` is a ``CLIPTextModel`` or ``CLIPTextTransformer``
    (``hf_clip`` and ``open_clip``), and raises the tower's ``max_length`` to match.
    """
    text_model = getattr(tower.backbone, "text_model", tower.backbone)
    embeddings = getattr(text_model, "embeddings", None)
    if embeddings is None or not isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding):
        raise ConfigError("long_text_positions needs a CLIP text tower (hf_clip or open_clip); this tower has no CLIP position table.")
    table = stretch_positions(embeddings.position_embedding.weight.detach(), keep, factor)
    embeddings.position_embedding = StretchedPositionEmbedding(table, keep)
    positions = table.shape[0]
    embeddings.position_ids = torch.arange(positions, device=table.device).unsqueeze(0)
    text_model.config.max_position_embeddings = positions
    tower.max_length = positions
    return positions
