"""Image files on disk named by annotation records: the dataset and the datamodule base.

Every format datamodule (CSV, JSONL, Karpathy JSON, image folders, and the domain
wrappers over them) only says how to read its records; loading, transforms, bad-sample
accounting and evaluation sets live here once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from vlp.data.base import ImageTextDataModule
from vlp.data.decode import open_image, open_pixels
from vlp.data.image_folder import DEFAULT_TEMPLATES, LinearProbeSet, read_class_folder
from vlp.data.multi_crop import MultiCrop, draft_short_side, multi_crop_from_config
from vlp.data.quality import BadSample, Skipped
from vlp.data.records import Reading, Record
from vlp.data.transforms import ImageTransform, data_config, image_transform
from vlp.evaluation.base import RetrievalSet, ZeroShotTask
from vlp.registry import ConfigError

QUALITY_WINDOW = 1000  # samples seen before the bad fraction is judged (fewer for small datasets)


def resolve(root: str, image: str) -> str:
    return image if os.path.isabs(image) or not root else os.path.join(root, image)


class FileDataset(Dataset):
    """``(image, captions, {"key": key})`` per record, or a :class:`Skipped` marker (keyed ``<split>/<key>``) for a bad image.

    With ``multi_crop`` the extras also hold the multi-crop views, cut from the decoded
    image before ``transform`` resizes it (a JPEG is then draft-decoded no smaller than the
    smallest crop needs).
    """

    def __init__(self, records: Sequence[Record], root: str, transform: ImageTransform, split: str = "train",
                 multi_crop: MultiCrop | None = None) -> None:
        self.records = records
        self.root = root
        self.transform = transform
        self.split = split
        self.multi_crop = multi_crop
        self.decode_short_side = draft_short_side(transform, multi_crop)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, list[str], dict[str, Any]] | Skipped:
        record = self.records[index]
        try:
            image = open_pixels(resolve(self.root, record.image), self.decode_short_side)
        except BadSample as bad:
            return Skipped(bad.cause, f"{self.split}/{record.key}")
        crops = self.multi_crop(image) if self.multi_crop is not None else {}
        return self.transform(image), record.captions, {"key": record.key, **crops}


class EvalImages(Dataset):
    """Image tensors only (what evaluations batch); built from records already known to be readable."""

    def __init__(self, paths: Sequence[str], transform: ImageTransform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(open_image(self.paths[index], self.transform.decode_short_side))


def readable(records: Sequence[Record], root: str, prefix: str = "") -> tuple[list[Record], list[tuple[str, str]]]:
    """Records whose image decodes, and the others' (cause, ``prefix + key``) (evaluation sets cannot skip later)."""
    good, bad = [], []
    for record in records:
        try:
            open_image(resolve(root, record.image))
        except BadSample as error:
            bad.append((error.cause, prefix + record.key))
            continue
        good.append(record)
    return good, bad


class FileDataModule(ImageTextDataModule):
    """Base of datamodules over image files: subclasses implement ``read(split)`` for "train"/"val".

    Transforms follow ``image_encoder`` (a timm model name, with ``image_encoder_kwargs``)
    when set, else ``image_size``; see :mod:`vlp.data.transforms`. Each of
    ``zero_shot_folders`` (class-per-folder trees, see :mod:`vlp.data.image_folder`) is a
    zero-shot task prompted with ``TEMPLATES``; one holding ``train/`` and ``test/``
    is also a linear-probe set (zero-shot on ``test/``). ``multi_crop`` (see
    :class:`vlp.data.multi_crop.MultiCrop`) adds multi-crop views, cut from each decoded
    image, to every training and validation batch.
    """

    COUNTS_STREAMED_SAMPLES = False  # every sample is counted once, as an annotation row
    TEMPLATES: list[str] = DEFAULT_TEMPLATES  # a domain's own prompt templates
    CLASS_NAMES: dict[str, str] = {}  # a domain's readable names for its class folders

    def __init__(
        self,
        root: str = "",
        image_size: int = 224,
        image_encoder: str | None = None,
        image_encoder_kwargs: dict | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        max_bad_fraction: float = 0.01,
        zero_shot_folders: list[str] | None = None,
        multi_crop: dict | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, all_captions=all_captions, max_bad_fraction=max_bad_fraction)
        self.root = root
        self.zero_shot_folders = list(zero_shot_folders or [])
        self.config = data_config(image_size, image_encoder, image_encoder_kwargs)
        self.multi_crop = multi_crop_from_config(multi_crop, max(self.config["input_size"][1:]), InterpolationMode(self.config["interpolation"]))
        self.eval_transform = image_transform(self.config, train=False)
        self.val_records: list[Record] = []
        self._eval_cache: dict[str, tuple[list[Record], EvalImages]] = {}

    def read(self, split: str) -> Reading | None:
        """The records of ``split`` ("train" or "val"); ``None`` when the dataset has no such split."""
        raise NotImplementedError

    def build(self) -> None:
        train = self._read_counted("train")
        val = self._read_counted("val")
        self.train_set = FileDataset(train.records, self.root, image_transform(self.config, train=True, dtype=torch.uint8), "train", self.multi_crop)
        self.val_records = val.records if val else []
        self.val_set = FileDataset(self.val_records, self.root, self.eval_transform, "val", self.multi_crop) if val else None

    def _read_counted(self, split: str) -> Reading | None:
        reading = self.read(split)
        if reading is not None:
            self.quality.min_samples = min(QUALITY_WINDOW, max(self.quality.seen + reading.seen, 1))
            self.quality.add_counts(f"{split} annotations", reading.seen, dict(reading.skipped), where=f"{type(self).__name__} {split} annotations")
        return reading

    def train_dataloader(self) -> DataLoader:
        """Full batches of the training records; fewer records than one batch would train 0 steps, so that is an error."""
        if len(self.train_set) < self.batch_size:
            raise ConfigError(
                f"{type(self).__name__} has {len(self.train_set)} training records, fewer than one batch of "
                f"data.batch_size={self.batch_size}, so an epoch would train 0 steps; lower data.batch_size or check the annotations."
            )
        return super().train_dataloader()

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else super().val_dataloader()

    def caption_corpus(self) -> list[str]:
        texts = [c for r in self.train_set.records for c in r.captions] + [c for r in self.val_records for c in r.captions]
        return texts + [t.format(c) for task in self.zero_shot_tasks() for c in task.class_names for t in task.templates]

    def eval_images(self, records: Sequence[Record], root: str, where: str, scope: str = "val") -> tuple[list[Record], EvalImages]:
        """Readable records and their image dataset; unreadable ones are counted once, then left out.

        ``scope`` "val" means the validation records (already counted as annotation rows, and
        their bad images are the validation loader's); any other scope counts its records.
        """
        if where not in self._eval_cache:
            good, bad = readable(records, root, "val/" if scope == "val" else "")
            self.quality.add(scope, 0 if scope == "val" else len(records), bad, where=where)
            self._eval_cache[where] = good, EvalImages([resolve(root, r.image) for r in good], self.eval_transform)
        return self._eval_cache[where]

    def retrieval_sets(self) -> list[RetrievalSet]:
        if not self.val_records:
            return []
        records, images = self.eval_images(self.val_records, self.root, f"{type(self).__name__} retrieval set")
        text_index: dict[str, int] = {}
        image_to_texts = [sorted({text_index.setdefault(c, len(text_index)) for c in r.captions}) for r in records]
        return [RetrievalSet(f"{self.registry_name}_val", images, list(text_index), image_to_texts)]

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        return [self.folder_task(path, "test" if _has_splits(path) else "") for path in self.zero_shot_folders]

    def linear_probe_sets(self) -> list[LinearProbeSet]:
        sets = []
        for path in filter(_has_splits, self.zero_shot_folders):
            train, test = self.folder_task(path, "train"), self.folder_task(path, "test")
            sets.append(LinearProbeSet(Path(path).name, test.class_names, train.images, train.labels, test.images, test.labels))
        return sets

    def folder_task(self, path: str, split: str) -> ZeroShotTask:
        folder = read_class_folder(Path(path) / split, self.TEMPLATES, self.CLASS_NAMES)
        where = f"image folder {Path(path) / split}"
        good, images = self.eval_images(folder.reading.records, "", where, scope=where)
        return ZeroShotTask(Path(path).name, folder.class_names, folder.templates, images, torch.tensor([r.label for r in good]))


def _has_splits(path: str) -> bool:
    return (Path(path) / "train").is_dir() and (Path(path) / "test").is_dir()
