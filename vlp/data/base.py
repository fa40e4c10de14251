"""The datamodule base for image-text pairs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from vlp.batch import Batch
from vlp.data.multi_crop import IMAGE_EXTRAS, MultiCrop
from vlp.data.quality import BATCH_KEY, DataQuality, Skipped, tally
from vlp.data.resumable import CarriesDraws, RandomSampler, RankShare, StatefulDataLoader
from vlp.data.transforms import unit_float
from vlp.evaluation.base import RetrievalSet, ZeroShotTask
from vlp.registry import ConfigError

TEXTS_KEY = "texts"

Tokenize = Callable[[list[str]], tuple[Tensor, Tensor]]


class ImageCaptionDataset(Dataset):
    """Images (N, C, H, W) with one or more captions each; ``__getitem__`` gives (image, captions).

    With ``multi_crop`` the held image is the source the crops are cut from, and items
    are (image, captions, crops).
    """

    def __init__(self, images: Tensor, captions: Sequence[Sequence[str]], multi_crop: MultiCrop | None = None) -> None:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists.")
        self.images = images
        self.captions = captions
        self.multi_crop = multi_crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Sequence[str]] | tuple[Tensor, Sequence[str], dict[str, Tensor]]:
        if self.multi_crop is None:
            return self.images[index], self.captions[index]
        return self.images[index], self.captions[index], self.multi_crop(self.images[index])


class Collate:
    """Stack images, tokenize captions, stack per-sample extras.

    Items are ``(image, captions)`` or ``(image, captions, extras)`` with ``extras`` a dict
    of per-sample values (e.g. ``sample_weight``), stacked into ``batch.extras``.
    One caption per image goes to ``input_ids``: a random one in training, the first
    otherwise. With ``all_captions`` every caption is also tokenized into
    ``extras["captions_input_ids"]`` / ``["captions_attention_mask"]`` (B, K, L), with
    ``extras["captions_valid"]`` (B, K) marking real captions (images may have fewer than K).
    Items that are :class:`Skipped` markers (bad samples) are dropped; the batch carries
    ``extras["data_quality"]`` (:func:`vlp.data.quality.tally`) so counts made in workers
    reach the main process. Extras that are not numbers (e.g. sample keys) stay lists.
    ``extras["texts"]`` holds the chosen captions as strings (for teachers' own tokenizers).
    uint8 images (and the image-valued extras, multi-crop views) become floats in [0, 1]
    here, unless ``keep_uint8`` (training loaders: a quarter of the bytes leave the
    workers, and ``on_after_batch_transfer`` divides by 255 on the device); images are
    stacked by :func:`stack_pixels`.
    """

    def __init__(self, tokenize: Tokenize, sample_caption: bool, all_captions: bool = False, seed: int = 0, keep_uint8: bool = False) -> None:
        self.tokenize = tokenize
        self.keep_uint8 = keep_uint8
        self.sample_caption = sample_caption
        self.all_captions = all_captions
        self.rng = random.Random(seed)

    def __call__(self, all_items: list[tuple | Skipped]) -> Batch:
        items = [item for item in all_items if not isinstance(item, Skipped)]
        skipped = Counter(item.cause for item in all_items if isinstance(item, Skipped))
        if not items:
            raise ConfigError(
                f"Every sample of a batch of {len(all_items)} was bad ({dict(skipped)}); check that the data "
                f"root path points at the images the annotations name."
            )
        if self.keep_uint8:
            images = stack_pixels([item[0] for item in items])
        else:
            images = unit_float(torch.stack([item[0] for item in items]))
        caption_lists = [item[1] for item in items]
        chosen = [self.rng.choice(c) if self.sample_caption else c[0] for c in caption_lists]
        input_ids, attention_mask = self.tokenize(chosen)
        extras: dict[str, Any] = {}
        if len(items[0]) > 2:
            extras = {key: _stack([item[2][key] for item in items]) for key in items[0][2]}
        if not self.keep_uint8:
            extras.update({key: unit_float(extras[key]) for key in IMAGE_EXTRAS if key in extras})
        if self.all_captions:
            extras.update(self._all_captions(caption_lists))
        extras[BATCH_KEY] = tally(all_items, "train" if self.sample_caption else "val")
        extras[TEXTS_KEY] = chosen  # the raw captions, for a teacher with a tokenizer of its own
        return Batch(images=images, input_ids=input_ids, attention_mask=attention_mask, extras=extras)

    def _all_captions(self, caption_lists: list[Sequence[str]]) -> dict[str, Tensor]:
        most = max(len(c) for c in caption_lists)
        padded = [list(c) + [c[0]] * (most - len(c)) for c in caption_lists]
        ids, mask = self.tokenize([text for captions in padded for text in captions])
        valid = torch.tensor([[k < len(c) for k in range(most)] for c in caption_lists])
        batch = len(caption_lists)
        return {
            "captions_input_ids": ids.view(batch, most, -1),
            "captions_attention_mask": mask.view(batch, most, -1),
            "captions_valid": valid,
        }


def stack_pixels(images: list[Tensor]) -> Tensor:
    """(C, H, W) images -> a (B, C, H, W) batch in the images' own memory layout, in shared memory inside a loader worker.

    Images stored (H, W, C), as ``pil_to_tensor`` leaves them, make a channels-last batch;
    contiguous (C, H, W) images, as the training transform's resize leaves them, make a
    contiguous one. Either way each image is one plain memory copy (copying across layouts
    would transpose every pixel: about 5x the time). A batch made in shared memory leaves
    the worker as it is, where the worker queue would otherwise copy it there. The device
    side makes it a contiguous float batch (:func:`vlp.data.transforms.unit_float`).
    """
    first = images[0]
    if first.dim() != 3 or any(image.shape != first.shape for image in images):
        return torch.stack(images)  # its own error for mismatched shapes
    size = len(images) * first.numel()
    flat = first.new(first._typed_storage()._new_shared(size, device=first.device)) if get_worker_info() is not None else first.new_empty(size)
    if not first.permute(1, 2, 0).is_contiguous():
        return torch.stack(images, out=flat.view(len(images), *first.shape))
    channels, height, width = first.shape
    out = flat.view(len(images), height, width, channels)
    torch.stack([image.permute(1, 2, 0) for image in images], out=out)
    return out.permute(0, 3, 1, 2)


def _stack(values: list) -> Tensor | list:
    if isinstance(values[0], Tensor):
        return torch.stack(values)
    return values if isinstance(values[0], str) else torch.as_tensor(values)


class ImageTextDataModule(L.LightningDataModule):
    """Base class: subclasses provide the datasets and evaluation sets; this class batches them.

    Subclasses implement ``build()`` (called once, in ``setup``) filling ``self.train_set``
    and ``self.val_set`` with :class:`ImageCaptionDataset` (or any dataset of
    ``(image, captions)``), plus ``caption_corpus``, ``zero_shot_tasks`` and
    ``retrieval_sets``. Images are float in [0, 1] or uint8. ``all_captions`` adds every
    caption of each training image to the batch (multi-positive objectives).
    The tokenizer is the text tower's, attached by the builder with ``attach_tokenizer``.
    Bad samples are counted in ``self.quality`` (from each batch, in
    ``on_before_batch_transfer``) and written to ``<run dir>/data_quality.json``.
    """

    COUNTS_STREAMED_SAMPLES = True  # False where samples are counted when annotations are read

    def __init__(
        self, batch_size: int = 128, num_workers: int = 0, seed: int = 0, all_captions: bool = False, max_bad_fraction: float = 0.01
    ) -> None:
        super().__init__()
        self.quality = DataQuality(max_bad_fraction)
        self._passes: dict[str, tuple] = {}
        self.all_captions = all_captions
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.tokenize: Tokenize | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def attach_tokenizer(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def build(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.build()

    def caption_corpus(self) -> list[str]:
        """Every text the model may be asked to read (captions and prompts), for vocabularies."""
        raise NotImplementedError

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        return []

    def retrieval_sets(self) -> list[RetrievalSet]:
        return []

    def linear_probe_sets(self) -> list:
        """``vlp.data.image_folder.LinearProbeSet`` s for a linear-probe evaluation."""
        return []

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        if self.tokenize is None:
            raise RuntimeError("attach_tokenizer() must be called before loaders are built.")
        generator = torch.Generator().manual_seed(self.seed)
        collate = Collate(self.tokenize, sample_caption=train, all_captions=self.all_captions, seed=self.seed, keep_uint8=train)
        # Training resumes mid-epoch at the exact next batch: the stateful loader's position, the
        # collate's caption generator and the augmentations' generators (both carried by the
        # dataset, per rank and worker) are saved in every checkpoint.
        # The sampler owns its generator: a loader's generator also seeds each new iterator, and those
        # draws are not part of the sampler's saved state.
        if not train:
            return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0, collate_fn=collate)
        dataset = CarriesDraws(dataset, collate.rng, self.seed)
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._rank_share(self.train_sampler(dataset, generator)),
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed + 1),
        )

    @staticmethod
    def _rank_share(sampler: Sampler[int]) -> Sampler[int]:
        """Under DDP, this rank's share of the order, resumable (see :class:`vlp.data.resumable.RankShare`)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return sampler
        return RankShare(sampler, dist.get_rank(), dist.get_world_size())

    def train_sampler(self, dataset: Dataset, generator: torch.Generator) -> Sampler[int]:
        """The training order; a replacement must save its position (``state_dict``) to resume mid-epoch."""
        return RandomSampler(dataset, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning calls this in the main process for every batch: take the bad-sample counts."""
        if isinstance(batch, Batch):
            self.record_quality(batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images (and multi-crop views) left the loader as uint8; they become floats in [0, 1] here, on the device."""
        if isinstance(batch, Batch):
            batch.images = unit_float(batch.images)
            batch.extras.update({key: unit_float(batch.extras[key]) for key in IMAGE_EXTRAS if key in batch.extras})
        return batch

    def record_quality(self, batch: Batch) -> None:
        """Move a batch's bad-sample tally into ``self.quality``; write the report when any are bad.

        File datamodules counted their samples when reading annotations, so only streamed
        ones (``COUNTS_STREAMED_SAMPLES``) add the batch's sample count.
        """
        tallied = batch.extras.pop(BATCH_KEY, None)
        if tallied is None:
            return
        scope = tallied["scope"]
        self._follow_pass(scope)
        before = self.quality.bad
        try:
            seen = tallied["seen"] if self.COUNTS_STREAMED_SAMPLES else 0
            self.quality.add(scope, seen, tallied["bad"], where=f"{type(self).__name__} {scope}")
        finally:
            if self.quality.bad > before:
                self.write_quality()

    def _follow_pass(self, scope: str) -> None:
        """Restart ``scope``'s counts when the trainer begins a new epoch (training) or validation pass."""
        trainer = self.trainer
        epoch = getattr(trainer, "current_epoch", 0)
        pass_id = (epoch,) if scope == "train" else (getattr(trainer, "sanity_checking", False), epoch, getattr(trainer, "global_step", 0))
        if self._passes.get(scope) != pass_id and scope in self.quality.scopes:  # also after an evaluation set's read
            self.quality.restart(scope, keep=scope != "train")
        self._passes[scope] = pass_id

    def write_quality(self) -> Path | None:
        """Write ``data_quality.json`` (``data_quality.rank<r>.json`` off rank 0) into the run directory."""
        trainer = self.trainer
        if trainer is None:
            return None
        rank = trainer.global_rank
        path = Path(trainer.default_root_dir) / ("data_quality.json" if rank == 0 else f"data_quality.rank{rank}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.quality.write(path)
        return path

    def teardown(self, stage: str) -> None:
        self.write_quality()


def retrieval_set(name: str, dataset: ImageCaptionDataset) -> RetrievalSet:
    """Retrieval set over a dataset's images and captions; identical captions become one text."""
    text_index: dict[str, int] = {}
    image_to_texts = []
    for captions in dataset.captions:
        image_to_texts.append(sorted({text_index.setdefault(c, len(text_index)) for c in captions}))
    images = dataset.images.float() / 255 if dataset.images.dtype == torch.uint8 else dataset.images
    return RetrievalSet(name, images, list(text_index), image_to_texts)
