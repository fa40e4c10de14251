"""The Karpathy-split JSON of COCO, Flickr30k, RSICD, UCM- and Sydney-Captions: several captions per image."""

from __future__ import annotations

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
    ) -> None:
        super().__init__(root, image_size, image_encoder, image_encoder_kwargs, batch_size, num_workers, seed, all_captions, max_bad_fraction, zero_shot_folders)
        self.annotations = annotations
        self.eval_split = eval_split

    def read(self, split: str) -> Reading | None:
        return read_karpathy(self.annotations, "train" if split == "train" else self.eval_split)
