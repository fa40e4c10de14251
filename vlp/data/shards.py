"""WebDataset tar shards, streamed: the pipeline pieces (decoding, bad-sample markers, batching).

A sample is ``<key>.<jpg|jpeg|png|webp>`` plus ``<key>.txt`` and/or ``<key>.json``
(whose ``captions`` list or ``caption`` string, when present, wins over ``txt``), unless
``image_key`` / ``caption_key`` name other members (RS5M: ``img_content`` and ``caption``). Shards are listed in the same order on every
rank and worker (seeded, per-epoch shard shuffle), then split by node and by worker, so
a finite epoch reads each shard exactly once overall; samples are then shuffled in a
buffer. A bad member or a truncated shard becomes a :class:`Skipped` marker counted in
the next batch; the rest of the shard is still used.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import webdataset as wds

from vlp.data.decode import clean_captions, open_pixels
from vlp.data.quality import BAD_RECORD, MISSING_IMAGE, SHARD_READ_ERROR, BadSample, Skipped
from vlp.data.multi_crop import MultiCrop, draft_short_side
from vlp.data.tar_members import shard_samples
from vlp.data.transforms import ImageTransform
from vlp.registry import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
NO_GOOD_SAMPLE_LIMIT = 1000  # bad samples read before the first good one that mean the keys or the shards are wrong


def captions_of(sample: dict[str, Any], caption_key: str | None = None) -> list[str]:
    """Captions from the ``caption_key`` member, else ``json``'s ``captions`` list or ``caption`` field, else ``txt``.

    A ``caption_key`` member ending in ``json`` is read like the ``json`` member; any other is text.
    """
    if caption_key is not None and not caption_key.endswith("json"):
        if caption_key not in sample:
            raise BadSample(BAD_RECORD, f"no {caption_key} member")
        return clean_captions([sample[caption_key]])
    meta: Any = {}
    json_key = caption_key or "json"
    if json_key in sample:
        try:
            meta = json.loads(sample[json_key])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadSample(BAD_RECORD, str(error)) from error
    value = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
    if value is not None:
        return clean_captions(value if isinstance(value, list) else [value])
    if "txt" not in sample:
        raise BadSample(BAD_RECORD, "no txt member and no caption in json")
    return clean_captions([sample["txt"]])


class Decode:
    """Raw shard sample -> ``(image, captions, {"key": key})`` or a :class:`Skipped` marker.

    ``image_key`` / ``caption_key`` name the members to read (default: the first image
    extension present, and ``json``/``txt``). With ``multi_crop`` the extras also hold the
    multi-crop views, cut from the decoded image before ``transform`` resizes it.
    """

    def __init__(self, transform: ImageTransform, image_key: str | None = None, caption_key: str | None = None,
                 multi_crop: MultiCrop | None = None) -> None:
        self.transform = transform
        self.image_keys = (image_key,) if image_key else IMAGE_EXTENSIONS
        self.caption_key = caption_key
        self.multi_crop = multi_crop
        self.decode_short_side = draft_short_side(transform, multi_crop)

    def __call__(self, sample: dict[str, Any] | Skipped) -> tuple | Skipped:
        if isinstance(sample, Skipped):
            return sample
        key = sample.get("__key__", "")
        try:
            name = next((ext for ext in self.image_keys if ext in sample), None)
            if name is None:
                raise BadSample(MISSING_IMAGE, key)
            captions = captions_of(sample, self.caption_key)
            image = open_pixels(sample[name], self.decode_short_side)
        except BadSample as bad:
            return Skipped(bad.cause, key)
        crops = self.multi_crop(image) if self.multi_crop is not None else {}
        return self.transform(image), captions, {"key": key, **crops}


class ReadErrors:
    """webdataset error handler that turns each tar read error into a :class:`Skipped` in the stream.

    ``handler`` records the error and lets webdataset continue with the next shard;
    the pipeline stage (``__call__``) emits the recorded markers between samples.
    Errors with no sample between them are one event (webdataset's tarfile path, used
    for compressed shards, reports a truncated shard twice: for the member and for the
    stream), so a truncated shard counts once.
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
    """Batches of exactly ``size`` good samples; skipped markers ride along so the collate counts them.

    Each batch is held back until the next one is complete, so bad samples after the
    last good one ride with the last batch and are counted too. A stream with samples
    but none good (or, resampled, ``NO_GOOD_SAMPLE_LIMIT`` bad ones before the first good
    one) is a :class:`ConfigError`: its shards hold no member the keys name.
    """
    held: list[Any] | None = None
    items: list[Any] = []
    good = 0
    for item in source:
        items.append(item)
        good += not isinstance(item, Skipped)
        if good == size:
            if held is not None:
                yield collate(held)
            held, items, good = items, [], 0
        elif held is None and not good and len(items) >= NO_GOOD_SAMPLE_LIMIT:  # a resampled stream never ends
            _no_good_sample(items)
    if held is None and not good and items:
        _no_good_sample(items)
    if good and partial:
        if held is not None:
            yield collate(held)
        held, items = items, []
    if held is not None:
        yield collate(held + [item for item in items if isinstance(item, Skipped)])


def _no_good_sample(items: list[Skipped]) -> None:
    causes = sorted({item.cause for item in items})
    raise ConfigError(
        f"A WebDataset stream read {len(items)} samples and none had an image and a caption ({', '.join(causes)}); "
        f"check that image_key/caption_key name the shards' members (RS5M: img_content, caption) and that the shard pattern is right."
    )


def sample_stream(
    urls: list[str], transform: ImageTransform, resampled: bool, shuffle_buffer: int, seed: int, split: bool = True,
    image_key: str | None = None, caption_key: str | None = None, decode: Callable[[Any], Any] | None = None,
    multi_crop: MultiCrop | None = None,
) -> wds.DataPipeline:
    """Decoded samples (and markers) of one source, split across nodes and workers.

    Resampled: each worker draws shards with replacement forever (its own seed).
    Finite: ``split_by_node`` and ``split_by_worker`` give worker ``w`` the shards
    ``urls[w::workers]`` (so its epoch's batch count is known from the shard index), each
    read once per epoch in a seeded per-epoch order (``split=False`` reads every shard
    here, for evaluation sets built on one process).
    """
    errors = ReadErrors()
    if resampled:
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed)]
    else:
        stages = [wds.SimpleShardList(urls)]
        stages += [wds.split_by_node, wds.split_by_worker] if split else []
        if shuffle_buffer > 0:
            stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed))
    stages += [partial(shard_samples, handler=errors.handler), errors]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100)))
    stages.append(wds.map(decode or Decode(transform, image_key, caption_key, multi_crop)))
    return wds.DataPipeline(*stages)
