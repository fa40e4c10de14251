"""Evaluation sets a datamodule offers, and the interface of an evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

T = TypeVar("T")


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

    Each (image, text) pair is one caption instance. A text may describe several images
    (datamodules list identical captions once, so each is embedded once) and an image may
    have several texts (COCO's five captions); the retrieval evaluation scores either the
    standard per-instance protocol or the merged one from these pairs.
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
    batches = DataLoader(images, batch_size=batch_size)
    chunks = [encoder.encode_image(batch.to(device)).float() for batch in progress(batches, "embedding images")]
    return torch.cat(chunks)


def embed_texts(encoder, texts: Sequence[str], batch_size: int) -> Tensor:
    """Normalised embeddings of every text, in order, computed batch by batch."""
    starts = progress(range(0, len(texts), batch_size), "embedding texts")
    chunks = [encoder.encode_text(list(texts[i : i + batch_size])).float() for i in starts]
    return torch.cat(chunks)


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """A progress bar on an interactive terminal (stderr); silent in logs and tests."""
    return tqdm(iterable, desc=description, total=total, leave=False, disable=None, dynamic_ncols=True)
