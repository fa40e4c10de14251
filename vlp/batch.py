"""The batch every datamodule produces and every objective reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Batch:
    """Images in [0, 1] (B, C, H, W), token ids and attention mask (B, L), and extras.

    ``extras`` carries optional per-sample data an objective may ask for by name
    (e.g. ``sample_weight``, all captions of an image, teacher embeddings).
    Lightning moves dataclass batches to the device field by field.
    """

    images: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]
