"""The text tower on each caption's first sentence: Long-CLIP's short caption of a long one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vlp.batch import Batch
from vlp.data.base import TEXTS_KEY
from vlp.encoders.features import Features
from vlp.registry import VIEWS


def first_sentence(caption: str) -> str:
    """Everything before the first ". " (Long-CLIP's ShareGPT4V loader splits the long caption this way)."""
    return caption.split(". ")[0]


@VIEWS.register("first_sentence")
@dataclass(frozen=True)
class FirstSentence:
    """Tokenizes the first sentence of every raw caption (``batch.extras["texts"]``) and encodes it."""

    tower: ClassVar[str] = "text"

    def __call__(self, encoder, batch: Batch) -> Features:
        ids, mask = encoder.text_tower.tokenize([first_sentence(text) for text in batch.extras[TEXTS_KEY]])
        device = batch.input_ids.device
        return encoder.text_tower(ids.to(device), mask.to(device))
