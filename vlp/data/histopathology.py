"""Histopathology: Quilt-1M's ``quilt_1M_lookup.csv`` (columns caption, image_path, split, ...)."""

from __future__ import annotations

from pathlib import Path

from vlp.data.decode import clean_captions
from vlp.data.files import FileDataModule
from vlp.data.records import Reading, Record, check_columns, collect, table_rows
from vlp.registry import DATAMODULES

TEMPLATES = ["a histopathology image of {}.", "an H&E stained image of {}.", "a microscopy image of {} tissue.", "{}."]


@DATAMODULES.register("quilt")
class QuiltDataModule(FileDataModule):
    """Quilt-1M: images in ``root/<images>/``, rows of ``lookup`` filtered by its ``split`` column."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        lookup: str = "quilt_1M_lookup.csv",
        images: str = "quilt_1m",
        train_split: str = "train",
        val_split: str = "val",
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
        self.lookup = Path(root) / lookup
        self.splits = {"train": train_split, "val": val_split}

    def read(self, split: str) -> Reading | None:
        def to_record(index: int, row: dict[str, str]) -> Record | None:
            if index == 0:
                check_columns(row, ("caption", "image_path", "split"), self.lookup)
            if row["split"] != self.splits[split]:
                return None
            return Record(str(index), row["image_path"], clean_captions([row["caption"] or ""]))

        return collect(table_rows(self.lookup), to_record)
