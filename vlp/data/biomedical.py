"""Biomedical literature: PMC-OA (JSONL), ROCO (captions.txt per split) and BIOMEDICA (WebDataset shards)."""

from __future__ import annotations

from pathlib import Path

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
        image_size: int = 224,
        image_encoder: str | None = None,
        image_encoder_kwargs: dict | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        max_bad_fraction: float = 0.01,
        zero_shot_folders: list[str] | None = None,
    ) -> None:
        super().__init__(str(Path(root) / images), image_size, image_encoder, image_encoder_kwargs, batch_size, num_workers, seed, all_captions, max_bad_fraction, zero_shot_folders)
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
        image_size: int = 224,
        image_encoder: str | None = None,
        image_encoder_kwargs: dict | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        max_bad_fraction: float = 0.01,
        zero_shot_folders: list[str] | None = None,
    ) -> None:
        super().__init__("", image_size, image_encoder, image_encoder_kwargs, batch_size, num_workers, seed, all_captions, max_bad_fraction, zero_shot_folders)
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
