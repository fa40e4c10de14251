"""WebDataset tar shards, streamed: the pipeline pieces (decoding, bad-sample markers, batching).

A sample is ``<key>.<jpg|jpeg|png|webp>`` plus ``<key>.txt`` and/or ``<key>.json``
(whose ``captions`` list or ``caption`` string, when present, wins over ``txt``). Shards are listed in the same order on every
rank and worker (seeded, per-epoch shard shuffle), then split by node and by worker, so
a finite epoch reads each shard exactly once overall; samples are then shuffled in a
buffer. A bad member or a truncated shard becomes a :class:`Skipped` marker counted in
the next batch; the rest of the shard is still used.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator

import webdataset as wds

from vlp.data.decode import clean_captions, open_image
from vlp.data.quality import BAD_RECORD, MISSING_IMAGE, SHARD_READ_ERROR, BadSample, Skipped
from vlp.data.transforms import ImageTransform

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def captions_of(sample: dict[str, Any]) -> list[str]:
    """Captions from ``json``'s ``captions`` list or ``caption`` field when present, else ``txt``."""
    meta: Any = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadSample(BAD_RECORD, str(error)) from error
    value = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
    if value is not None:
        return clean_captions(value if isinstance(value, list) else [value])
    if "txt" not in sample:
        raise BadSample(BAD_RECORD, "no txt member and no caption in json")
    return clean_captions([sample["txt"]])


class Decode:
    """Raw shard sample -> ``(image, captions, {"key": key})`` or a :class:`Skipped` marker."""

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any] | Skipped) -> tuple | Skipped:
        if isinstance(sample, Skipped):
            return sample
        key = sample.get("__key__", "")
        try:
            name = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
            if name is None:
                raise BadSample(MISSING_IMAGE, key)
            captions = captions_of(sample)
            image = open_image(sample[name], self.transform.decode_short_side)
        except BadSample as bad:
            return Skipped(bad.cause, key)
        return self.transform(image), captions, {"key": key}


class ReadErrors:
    """webdataset error handler that turns each tar read error into a :class:`Skipped` in the stream.

    ``handler`` records the error and lets webdataset continue with the next shard;
    the pipeline stage (``__call__``) emits the recorded markers between samples.
    Errors with no sample between them are one event (webdataset reports a truncated
    shard twice: for the member and for the stream), so a truncated shard counts once.
    """

    def __init__(self) -> None:
        self.pending: list[Skipped] = []

    def handler(self, error: Exception) -> bool:
        if not self.pending:
            self.pending.append(Skipped(SHARD_READ_ERROR, str(error)[:200]))
        return True

    def _flush(self) -> Iterator[Skipped]:
        while self.pending:
            yield self.pending.pop(0)

    def __call__(self, source: Iterable[Any]) -> Iterator[Any]:
        for sample in source:
            yield from self._flush()
            yield sample
        yield from self._flush()


def full_batches(source: Iterable[Any], size: int, collate: Callable[[list], Any], partial: bool) -> Iterator[Any]:
    """Batches of exactly ``size`` good samples; skipped markers ride along so the collate counts them."""
    items: list[Any] = []
    good = 0
    for item in source:
        items.append(item)
        good += not isinstance(item, Skipped)
        if good == size:
            yield collate(items)
            items, good = [], 0
    if good and partial:
        yield collate(items)


def sample_stream(urls: list[str], transform: ImageTransform, resampled: bool, shuffle_buffer: int, seed: int, split: bool = True) -> wds.DataPipeline:
    """Decoded samples (and markers) of one source, split across nodes and workers.

    Resampled: each worker draws shards with replacement forever (its own seed).
    Finite: a seeded per-epoch shard order identical on every rank and worker, then
    ``split_by_node`` and ``split_by_worker``: each shard is read once per epoch
    (``split=False`` reads every shard here, for evaluation sets built on one process).
    """
    errors = ReadErrors()
    if resampled:
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed)]
    else:
        stages = [wds.SimpleShardList(urls)]
        if shuffle_buffer > 0:
            stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed))
        stages += [wds.split_by_node, wds.split_by_worker] if split else []
    stages += [wds.tarfile_to_samples(handler=errors.handler), errors]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100)))
    stages.append(wds.map(Decode(transform)))
    return wds.DataPipeline(*stages)
