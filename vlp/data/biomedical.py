"""Biomedical literature: PMC-OA (JSONL), ROCO (captions.txt per split) and BIOMEDICA (WebDataset shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlp.data.decode import clean_captions, decode_text
from vlp.data.files import FileDataModule
from vlp.data.records import Reading, Record, collect, read_jsonl, require_file
from vlp.data.web_shards import WebDatasetDataModule
from vlp.registry import DATAMODULES

TEMPLATES = ["a figure of {}.", "a medical image showing {}.", "a biomedical image of {}.", "{}."]


@DATAMODULES.register("pmc_oa")
class PmcOaDataModule(FileDataModule):
    """PMC-OA: ``train.jsonl``/``valid.jsonl`` lines ``{"image": "PMC..._F1.jpg", "caption": ...}``, images in ``images/``."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        train: str = "train.jsonl",
        val: str | None = "valid.jsonl",
        images: str = "images",
        **common: Any,
    ) -> None:
        super().__init__(root=str(Path(root) / images), **common)
        self.files = {"train": Path(root) / train, "val": Path(root) / val if val else None}

    def read(self, split: str) -> Reading | None:
        path = self.files[split]
        return None if path is None else read_jsonl(path, "image", "caption")


@DATAMODULES.register("roco")
class RocoDataModule(FileDataModule):
    """ROCO: ``<root>/<split>/<subset>/captions.txt`` lines ``ROCO_00002<TAB>caption``, images ``images/ROCO_00002.jpg``."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        subset: str = "radiology",
        train_split: str = "train",
        val_split: str = "validation",
        **common: Any,
    ) -> None:
        super().__init__(root="", **common)
        self.folders = {"train": Path(root) / train_split / subset, "val": Path(root) / val_split / subset}

    def read(self, split: str) -> Reading | None:
        folder = self.folders[split]

        def to_record(index: int, line: bytes) -> Record | None:
            name, _, caption = line.rstrip(b"\r\n").partition(b"\t")
            if not name.strip():
                return None
            key = decode_text(name).strip()
            return Record(key, str(folder / "images" / f"{key}.jpg"), clean_captions([caption]))

        with open(require_file(folder / "captions.txt", "ROCO captions.txt"), "rb") as file:
            return collect(file, to_record)


@DATAMODULES.register("biomedica")
class BiomedicaDataModule(WebDatasetDataModule):
    """BIOMEDICA's WebDataset shards (``jpg`` + ``txt`` caption + ``json`` metadata), with biomedical prompts."""

    TEMPLATES = TEMPLATES
