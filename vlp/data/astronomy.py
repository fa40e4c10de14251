"""Astronomy: CosmoCLIP-style class folders of sky images (SpaceNet), each with a caption.

Layouts: SpaceNet as published, one class-folder tree ``root/<class>/<image>`` (galaxy,
nebula, star, ...) split here into train and validation by a seeded ``val_fraction`` of
image keys; or an already split ``root/train|test/<class>/<image>``. SpaceNet ships no
captions: CosmoCLIP generated one per image with a captioning model (BLIP). Put such
captions in ``captions.json`` (``{"<class>/<image>": caption}``, in ``root`` or in each
split folder); without it each image is captioned with the class prompts (``TEMPLATES``
filled with its class name), i.e. plain class-name supervision. The class folders double
as a zero-shot task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlp.data.decode import clean_captions
from vlp.data.files import FileDataModule
from vlp.data.image_folder import captioned, read_class_folder
from vlp.data.quality import BadSample
from vlp.data.records import Reading, Record, held_out
from vlp.evaluation.base import ZeroShotTask
from vlp.registry import DATAMODULES

TEMPLATES = ["an astronomical image of a {}.", "a telescope image of a {}.", "a {} in space.", "a photo of a {} in the night sky."]


@DATAMODULES.register("cosmoclip")
class CosmoClipDataModule(FileDataModule):
    """SpaceNet-style class folders (one tree, or ``train_split``/``val_split`` trees); zero-shot over the classes."""

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "test",
        val_fraction: float = 0.1,
        **common: Any,
    ) -> None:
        super().__init__(root="", **common)
        self.tree = Path(root)
        self.folders = {"train": self.tree / train_split, "val": self.tree / val_split}
        self.val_fraction = val_fraction

    def read(self, split: str) -> Reading | None:
        presplit = self.folders["train"].is_dir() and self.folders["val"].is_dir()
        folder_root = self.folders[split] if presplit else self.tree
        folder = read_class_folder(folder_root, self.TEMPLATES, self.CLASS_NAMES)
        if not presplit:
            val = split == "val"
            folder.reading.records = [r for r in folder.reading.records if held_out(r.key, self.val_fraction, self.seed) == val]
            folder.reading.seen = len(folder.reading.records)
        if split == "val":
            self.class_names = folder.class_names
        captions_file = next((p for p in (folder_root / "captions.json", self.tree / "captions.json") if p.is_file()), None)
        if captions_file is None:
            return Reading(captioned(folder), folder.reading.seen)
        captions = json.loads(captions_file.read_text(encoding="utf-8"))
        reading = Reading(seen=folder.reading.seen)
        for record in folder.reading.records:
            try:
                reading.records.append(Record(record.key, record.image, clean_captions([captions.get(record.key, "")]), record.label))
            except BadSample as bad:
                reading.skipped[bad.cause] += 1
        return reading

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        good, images = self.eval_images(self.val_records, "", "cosmoclip classes")
        task = ZeroShotTask("cosmoclip_class", self.class_names, self.TEMPLATES, images, torch.tensor([r.label for r in good]))
        return [task] + super().zero_shot_tasks()
