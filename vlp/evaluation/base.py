"""Evaluation sets a datamodule offers, and the interface of an evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


@dataclass
class ZeroShotTask:
    """Classify ``images`` into ``class_names`` by text prompts built from ``templates``."""

    name: str
    class_names: list[str]
    templates: list[str]
    images: Dataset | Tensor
    labels: Tensor


@dataclass
class RetrievalSet:
    """Images and texts; ``image_to_texts[i]`` lists the texts that describe image ``i``.

    A text may describe several images (identical captions are merged), and an image
    may have several texts (COCO's five captions).
    """

    name: str
    images: Dataset | Tensor
    texts: list[str]
    image_to_texts: list[list[int]]


class EvaluationSource(Protocol):
    """What a datamodule provides to evaluations."""

    def zero_shot_tasks(self) -> list[ZeroShotTask]: ...

    def retrieval_sets(self) -> list[RetrievalSet]: ...

    def linear_probe_sets(self) -> list: ...


class Evaluation:
    """Called with the dual encoder and the datamodule; returns flat ``{name: value}`` metrics."""

    registry_name: str

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        raise NotImplementedError


def embed_images(encoder, images: Dataset | Tensor, batch_size: int) -> Tensor:
    """Normalised embeddings of every image, in order, computed batch by batch."""
    device = next(encoder.parameters()).device
    chunks = [encoder.encode_image(batch.to(device)).float() for batch in DataLoader(images, batch_size=batch_size)]
    return torch.cat(chunks)


def embed_texts(encoder, texts: Sequence[str], batch_size: int) -> Tensor:
    """Normalised embeddings of every text, in order, computed batch by batch."""
    chunks = [encoder.encode_text(list(texts[i : i + batch_size])).float() for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)
