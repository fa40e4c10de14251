"""Histopathology: Quilt-1M's ``quilt_1M_lookup.csv`` (columns caption, image_path, split, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        **common: Any,
    ) -> None:
        super().__init__(root=str(Path(root) / images), **common)
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
