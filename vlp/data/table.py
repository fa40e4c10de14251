"""Generic CSV/TSV and JSONL datamodules: one image path and caption(s) per row or line."""

from __future__ import annotations

from typing import Any

from vlp.data.files import FileDataModule
from vlp.data.records import Reading, read_jsonl, read_table
from vlp.registry import DATAMODULES


@DATAMODULES.register("csv")
class CsvDataModule(FileDataModule):
    """``train``/``val`` CSV (or ``.tsv``) files with image-path and caption columns (open_clip's names by default)."""

    def __init__(
        self,
        train: str,
        val: str | None = None,
        image_column: str = "filepath",
        caption_column: str = "title",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.files = {"train": train, "val": val}
        self.image_column = image_column
        self.caption_column = caption_column

    def read(self, split: str) -> Reading | None:
        path = self.files[split]
        return None if path is None else read_table(path, self.image_column, self.caption_column)


@DATAMODULES.register("jsonl")
class JsonlDataModule(FileDataModule):
    """``train``/``val`` JSON-lines files; the caption field may hold a string or a list of strings."""

    def __init__(
        self,
        train: str,
        val: str | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.files = {"train": train, "val": val}
        self.image_key = image_key
        self.caption_key = caption_key

    def read(self, split: str) -> Reading | None:
        path = self.files[split]
        return None if path is None else read_jsonl(path, self.image_key, self.caption_key)
