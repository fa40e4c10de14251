"""Evaluation sets a datamodule offers, and the interface of an evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vlp.distributed import rank_and_world_size

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
    """Called with the dual encoder and the datamodule; returns flat ``{name: value}`` metrics.

    ``every_validation``: whether it also runs at each validation during training, or only
    before and after training (costly protocols such as a probe's regularisation search).
    The class sets the default; a YAML entry's ``every_validation:`` overrides it.
    """

    registry_name: str
    every_validation: bool = True

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        raise NotImplementedError


def embed_images(encoder, images: Dataset | Tensor, batch_size: int) -> Tensor:
    """Normalised embeddings of every image, in order, computed batch by batch (each rank its share)."""
    device = next(encoder.parameters()).device
    loader = DataLoader(Subset(images, rank_share(len(images))), batch_size=batch_size)
    chunks = [encoder.encode_image(batch.to(device)).float() for batch in progress(loader, "embedding images")]
    return gather_shares(torch.cat(chunks), len(images))


def embed_texts(encoder, texts: Sequence[str], batch_size: int) -> Tensor:
    """Normalised embeddings of every text, in order, computed batch by batch (each rank its share)."""
    mine = [texts[i] for i in rank_share(len(texts))]
    starts = progress(range(0, len(mine), batch_size), "embedding texts")
    chunks = [encoder.encode_text(mine[i : i + batch_size]).float() for i in starts]
    return gather_shares(torch.cat(chunks), len(texts))


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """A progress bar on an interactive terminal (stderr); silent in logs and tests."""
    return tqdm(iterable, desc=description, total=total, leave=False, disable=None, dynamic_ncols=True)


def rank_share(count: int) -> list[int]:
    """The indices this rank embeds: a contiguous slice, the same length on every rank.

    The last slices are padded by repeating the final index, so every rank runs the same
    number of forward passes (FSDP gathers parameters in each one, on every rank).
    """
    rank, world_size = rank_and_world_size()
    per_rank = -(-count // world_size)
    indices = list(range(rank * per_rank, min(count, (rank + 1) * per_rank)))
    return indices + [count - 1] * (per_rank - len(indices))


def gather_shares(local: Tensor, count: int) -> Tensor:
    """Every rank's share in rank order, padding dropped: the embeddings of all ``count`` items."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)[:count]


def is_main_rank() -> bool:
    """Metrics are computed from the gathered embeddings once, on rank 0; other ranks return none."""
    return rank_and_world_size()[0] == 0
