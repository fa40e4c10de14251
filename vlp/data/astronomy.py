"""Astronomy: CosmoCLIP-style class folders of sky images, each with a generated caption.

Layout: ``root/<split>/<class>/<image>`` (e.g. SpaceNet's galaxy, nebula, star, ...)
and ``root/<split>/captions.json`` mapping ``"<class>/<image>"`` to the caption a
captioning model wrote for it. The class folders double as a zero-shot task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlp.data.decode import clean_captions
from vlp.data.files import FileDataModule
from vlp.data.image_folder import read_class_folder
from vlp.data.quality import BadSample
from vlp.data.records import Reading, Record, require_file
from vlp.evaluation.base import ZeroShotTask
from vlp.registry import DATAMODULES

TEMPLATES = ["an astronomical image of a {}.", "a telescope image of a {}.", "a {} in space.", "a photo of a {} in the night sky."]


@DATAMODULES.register("cosmoclip")
class CosmoClipDataModule(FileDataModule):
    """``root/train`` and ``root/test`` class folders with ``captions.json``; zero-shot over the test classes."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "test",
        **common: Any,
    ) -> None:
        super().__init__(root="", **common)
        self.folders = {"train": Path(root) / train_split, "val": Path(root) / val_split}

    def read(self, split: str) -> Reading | None:
        folder = read_class_folder(self.folders[split], self.TEMPLATES, self.CLASS_NAMES)
        captions = json.loads(require_file(self.folders[split] / "captions.json", "CosmoCLIP captions.json").read_text(encoding="utf-8"))
        reading = Reading(seen=folder.reading.seen)
        for record in folder.reading.records:
            try:
                reading.records.append(Record(record.key, record.image, clean_captions([captions.get(record.key, "")]), record.label))
            except BadSample as bad:
                reading.skipped[bad.cause] += 1
        if split == "val":
            self.class_names = folder.class_names
        return reading

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        good, images = self.eval_images(self.val_records, "", "cosmoclip classes")
        task = ZeroShotTask("cosmoclip_class", self.class_names, self.TEMPLATES, images, torch.tensor([r.label for r in good]))
        return [task] + super().zero_shot_tasks()
