"""The ``webdataset`` datamodule: training and evaluation streamed from tar shards, several sources mixed."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from vlp.data.base import Collate
from vlp.data.files import FileDataModule
from vlp.data.quality import Skipped
from vlp.data.shards import full_batches, sample_stream
from vlp.data.tar_members import shard_samples
from vlp.data.transforms import ImageTransform, image_transform
from vlp.evaluation.base import RetrievalSet
from vlp.registry import DATAMODULES, ConfigError

INDEX_FILE = "shards.json"  # written by tools/make_shards.py next to the shards: {"shards": {name: samples}}
CORPUS_SAMPLES = 20000  # training captions read for a word-level vocabulary


def shard_urls(pattern: str) -> list[str]:
    """Brace-expanded shard paths (``data/{000000..000099}.tar``); local ones must exist."""
    urls = expand_urls(pattern)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if not urls or missing:
        raise ConfigError(f"Shard(s) {missing[:3] or pattern} do not exist; check the shard pattern (brace syntax: dir/{{000000..000009}}.tar).")
    return urls


def indexed_samples(urls: list[str]) -> int | None:
    """Sample count from the shards' ``shards.json`` index, when every shard is listed there."""
    total = 0
    for url in urls:
        index = Path(url).parent / INDEX_FILE
        counts = json.loads(index.read_text())["shards"] if index.is_file() else {}
        if Path(url).name not in counts:
            return None
        total += counts[Path(url).name]
    return total


@DATAMODULES.register("webdataset")
class WebDatasetDataModule(FileDataModule):
    """Streams ``train`` (one brace pattern per source, mixed by ``train_weights``) and ``val`` shards.

    Finite mode reads every shard once per epoch (the last batch of a worker may be
    short), on one process only: under DDP ranks could take different numbers of steps
    and a loss's all-gather would hang, so it is refused. ``resampled`` draws shards
    forever and cuts epochs of ``epoch_samples`` into equal full batches on every rank.
    ``epoch_samples`` defaults to the count in ``shards.json`` written by make_shards.
    ``image_key`` / ``caption_key`` name the shard members to read (default: the image
    extension present, and ``json``/``txt``). ``multi_crop`` adds multi-crop views, cut from
    each decoded image (see :class:`vlp.data.multi_crop.MultiCrop`).
    """

    COUNTS_STREAMED_SAMPLES = True  # no annotation file: samples are counted as they stream by

    def __init__(
        self,
        train: list[str],
        train_weights: list[float] | None = None,
        val: str | None = None,
        epoch_samples: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        image_size: int = 224,
        image_encoder: str | None = None,
        image_encoder_kwargs: dict | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        max_bad_fraction: float = 0.01,
        zero_shot_folders: list[str] | None = None,
        image_key: str | None = None,
        caption_key: str | None = None,
        multi_crop: dict | None = None,
    ) -> None:
        super().__init__("", image_size, image_encoder, image_encoder_kwargs, batch_size, num_workers, seed, all_captions, max_bad_fraction,
                         zero_shot_folders, multi_crop)
        if train_weights is not None and len(train_weights) != len(train):
            raise ConfigError(f"train_weights has {len(train_weights)} weights for {len(train)} train sources; give one weight per source.")
        self.patterns, self.weights, self.val_pattern = train, train_weights, val
        if len(train) > 1 and not resampled:
            raise ConfigError(f"Mixing {len(train)} train sources needs data.resampled=true (a finite mix stops when its first source runs out).")
        self.epoch_samples, self.resampled, self.shuffle_buffer = epoch_samples, resampled, shuffle_buffer
        self.image_key, self.caption_key = image_key, caption_key

    def build(self) -> None:
        self.sources = [shard_urls(p) for p in self.patterns]
        self.val_urls = shard_urls(self.val_pattern) if self.val_pattern else []
        if self.epoch_samples is None:
            counts = [indexed_samples(urls) for urls in self.sources]
            if None in counts:
                raise ConfigError(f"The number of training samples per epoch is unknown (no {INDEX_FILE} beside the shards, as with published RS5M or BIOMEDICA shards); set data.epoch_samples.")
            self.epoch_samples = sum(counts)
        self.quality.min_samples = min(self.quality.min_samples, max(self.epoch_samples, 1))  # judge a small dataset whole
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "sources"):
            self.build()

    def _collate(self, train: bool) -> Collate:
        if self.tokenize is None:
            raise RuntimeError("attach_tokenizer() must be called before loaders are built.")
        return Collate(self.tokenize, sample_caption=train, all_captions=self.all_captions, seed=self.seed, keep_uint8=True)

    def _stream_loader(self, pipeline: wds.DataPipeline, batches_per_rank: int | None) -> DataLoader:
        """A loader over a pipeline that batches itself; ``len`` is ``batches_per_rank`` when known."""
        if batches_per_rank is not None:
            pipeline = pipeline.with_length(batches_per_rank, silent=True)
        return DataLoader(pipeline, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _stream(self, urls: list[str], transform: ImageTransform, resampled: bool, shuffle_buffer: int, seed: int, split: bool = True,
                decode: Callable[[Any], Any] | None = None) -> wds.DataPipeline:
        return sample_stream(urls, transform, resampled, shuffle_buffer, seed, split, self.image_key, self.caption_key, decode, self.multi_crop)

    def train_decoder(self, transform: ImageTransform) -> Callable[[Any], Any] | None:
        """How training samples are decoded: ``None`` for the standard decoding (subclasses replay stored augmentations)."""
        return None

    def train_dataloader(self) -> DataLoader:
        transform = image_transform(self.config, train=True, dtype=torch.uint8)
        decode = self.train_decoder(transform)
        streams = [self._stream(urls, transform, self.resampled, self.shuffle_buffer, self.seed + i, decode=decode)
                   for i, urls in enumerate(self.sources)]
        stream = streams[0] if len(streams) == 1 else wds.RandomMix(streams, probs=self.weights)
        world, workers = pytorch_worker_info()[1], max(1, self.num_workers)
        batching = partial(full_batches, size=self.batch_size, collate=self._collate(True), partial=not self.resampled)
        if self.resampled:
            per_worker = max(1, self.epoch_samples // (world * workers * self.batch_size))
            return self._stream_loader(wds.DataPipeline(stream, batching).with_epoch(per_worker), per_worker * workers)
        if world > 1:
            raise ConfigError(
                f"Finite WebDataset epochs on {world} processes can give ranks different numbers of batches (a loss's "
                f"all-gather then hangs); set data.resampled=true with data.epoch_samples for multi-process training."
            )
        return self._stream_loader(wds.DataPipeline(stream, batching), finite_batches(self.sources[0], self.epoch_samples, workers, self.batch_size))

    def val_dataloader(self) -> DataLoader | list:
        """The validation shards streamed on one process; on several, every rank batches its share of them read in memory.

        Under DDP the samples (read once, as the retrieval set is) become a map-style
        dataset that Lightning's distributed sampler splits into equal shares.
        """
        if not self.val_urls:
            return []
        if pytorch_worker_info()[1] > 1:
            return self._loader(_Samples(self._val_samples()), train=False)
        stream = self._stream(self.val_urls, self.eval_transform, False, 0, self.seed)
        batching = partial(full_batches, size=self.batch_size, collate=self._collate(False), partial=True)
        count = indexed_samples(self.val_urls)
        length = None if count is None else finite_batches(self.val_urls, count, max(1, self.num_workers), self.batch_size)
        return self._stream_loader(wds.DataPipeline(stream, batching), length)

    def _val_samples(self) -> list[tuple]:
        """Every good validation sample, read here in one process (bad ones are counted as a validation pass)."""
        if not hasattr(self, "_val_cache"):
            items = list(self._stream(self.val_urls, self.eval_transform, False, 0, self.seed, split=False))
            self.quality.restart("val", keep=True)
            bad = [(item.cause, item.key) for item in items if isinstance(item, Skipped)]
            self.quality.add("val", len(items), bad, where=f"validation shards {self.val_pattern}")
            self._val_cache = [item for item in items if not isinstance(item, Skipped)]
            if not self._val_cache:
                raise ConfigError(
                    f"The validation shards {self.val_pattern} hold no sample with an image and a caption ({len(items)} read); "
                    f"check data.val and that image_key/caption_key name the shards' members."
                )
        return self._val_cache

    def retrieval_sets(self) -> list[RetrievalSet]:
        if not self.val_urls:
            return []
        samples = self._val_samples()
        text_index: dict[str, int] = {}
        image_to_texts = [sorted({text_index.setdefault(c, len(text_index)) for c in s[1]}) for s in samples]
        return [RetrievalSet(f"{self.registry_name}_val", torch.stack([s[0] for s in samples]), list(text_index), image_to_texts)]

    def caption_corpus(self) -> list[str]:
        texts = [c for s in (self._val_samples() if self.val_urls else []) for c in s[1]]
        raw = wds.DataPipeline(wds.SimpleShardList([u for urls in self.sources for u in urls]), partial(shard_samples, handler=wds.ignore_and_continue))
        for count, sample in enumerate(raw):
            if count >= CORPUS_SAMPLES:
                break
            texts += [sample[k].decode("utf-8", "replace") for k in ((self.caption_key,) if self.caption_key else ("txt", "json")) if k in sample]
        return texts + [t.format(c) for task in self.zero_shot_tasks() for c in task.class_names for t in task.templates]


class _Samples(list):
    """Decoded samples held in memory, as a map-style dataset."""


def finite_batches(urls: list[str], samples: int, workers: int, batch_size: int) -> int:
    """The batches one process yields in a finite epoch: each worker batches its own shards, ending on a short batch.

    Worker ``w`` reads shards ``urls[w::workers]``; their sample counts come from
    ``shards.json`` when it lists every shard, else ``samples`` is shared by shard count.
    """
    index = [indexed_samples([url]) for url in urls]
    counts = index if None not in index else [samples // len(urls) + (i < samples % len(urls)) for i in range(len(urls))]
    return sum(math.ceil(sum(counts[w::workers]) / batch_size) for w in range(workers))
