"""Art: SemArt-style painting catalogues whose metadata (title, author, date, technique, type, school) become captions.

Layout: ``semart_train.csv`` / ``semart_val.csv`` / ``semart_test.csv``, tab-separated and
Windows-1252 encoded (the official code, github.com/noagarcia/SemArt, reads them with
pandas, tab delimiter and encoding ``Cp1252``), with columns IMAGE_FILE, DESCRIPTION, AUTHOR, TITLE, TECHNIQUE, DATE, TYPE, SCHOOL, TIMEFRAME,
and images in ``Images/``. Each painting gets a metadata caption and, when present, its
description; its TYPE (portrait, landscape, ...) is a built-in zero-shot task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlp.data.decode import clean_captions, decode_text
from vlp.data.files import FileDataModule
from vlp.data.records import Reading, Record, check_columns, collect, table_rows
from vlp.evaluation.base import ZeroShotTask
from vlp.registry import DATAMODULES

TEMPLATES = ["a {} painting.", "a painting of the {} genre.", "an artwork, a {}.", "a {} by an old master."]
COLUMNS = ("IMAGE_FILE", "DESCRIPTION", "AUTHOR", "TITLE", "TECHNIQUE", "DATE", "TYPE", "SCHOOL")


def metadata_caption(row: dict[str, str]) -> str:
    """``"<title>" by <author> (<date>), <technique>; a <type> painting of the <school> school.``"""
    field = {k: decode_text(row.get(k) or "").strip() for k in COLUMNS}
    text = f'"{field["TITLE"]}" by {field["AUTHOR"].title() or "an unknown artist"}'
    text += f" ({field['DATE']})" if field["DATE"] and field["DATE"] != "-" else ""
    text += f", {field['TECHNIQUE']}" if field["TECHNIQUE"] else ""
    return text + f"; a {field['TYPE']} painting of the {field['SCHOOL']} school."


@DATAMODULES.register("semart")
class SemArtDataModule(FileDataModule):
    """SemArt catalogues in ``root`` (Windows-1252 as published; ``encoding`` for re-encoded copies); zero-shot over painting TYPE."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        train: str = "semart_train.csv",
        val: str = "semart_val.csv",
        images: str = "Images",
        encoding: str = "cp1252",
        **common: Any,
    ) -> None:
        super().__init__(root=str(Path(root) / images), **common)
        self.files = {"train": Path(root) / train, "val": Path(root) / val}
        self.encoding = encoding
        self.types: dict[str, str] = {}

    def read(self, split: str) -> Reading | None:
        def to_record(index: int, row: dict[str, str]) -> Record:
            if index == 0:
                check_columns(row, COLUMNS, self.files[split])
            captions = clean_captions([metadata_caption(row), row["DESCRIPTION"] or ""])
            self.types[row["IMAGE_FILE"]] = decode_text(row["TYPE"] or "").strip().lower()
            return Record(row["IMAGE_FILE"], row["IMAGE_FILE"], captions)

        return collect(table_rows(self.files[split], delimiter="\t", encoding=self.encoding), to_record)

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        records = [r for r in self.val_records if self.types.get(r.key)]
        if not records:
            return super().zero_shot_tasks()
        classes = sorted({self.types[r.key] for r in records})
        good, images = self.eval_images(records, self.root, "semart types")
        task = ZeroShotTask("semart_type", classes, self.TEMPLATES, images, torch.tensor([classes.index(self.types[r.key]) for r in good]))
        return [task] + super().zero_shot_tasks()
