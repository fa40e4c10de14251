"""The Karpathy-split JSON of COCO, Flickr30k, RSICD, UCM- and Sydney-Captions: several captions per image."""

from __future__ import annotations

from typing import Any

from vlp.data.files import FileDataModule
from vlp.data.records import Reading, read_karpathy
from vlp.registry import DATAMODULES


@DATAMODULES.register("karpathy")
class KarpathyDataModule(FileDataModule):
    """Trains on the ``train`` (+ ``restval``) split; ``eval_split`` ("val" or "test") is validated and retrieved."""

    def __init__(
        self,
        annotations: str,
        eval_split: str = "test",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.annotations = annotations
        self.eval_split = eval_split

    def read(self, split: str) -> Reading | None:
        return read_karpathy(self.annotations, "train" if split == "train" else self.eval_split)
