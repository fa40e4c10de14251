"""Train and evaluate on class-per-folder images: captions are the prompt templates filled with the class."""

from __future__ import annotations

from pathlib import Path

from vlp.data.files import FileDataModule
from vlp.data.image_folder import DEFAULT_TEMPLATES, captioned, read_class_folder
from vlp.data.records import Reading
from vlp.registry import DATAMODULES, ConfigError


@DATAMODULES.register("image_folder")
class ImageFolderDataModule(FileDataModule):
    """``root/train/<class>/*`` and ``root/test/<class>/*``: captions from ``templates``; zero-shot and linear probe on them."""

    def __init__(
        self,
        root: str,
        templates: list[str] | None = None,
        image_size: int = 224,
        image_encoder: str | None = None,
        image_encoder_kwargs: dict | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        max_bad_fraction: float = 0.01,
    ) -> None:
        if not ((Path(root) / "train").is_dir() and (Path(root) / "test").is_dir()):
            raise ConfigError(f"Image folder {root} needs train/ and test/ subfolders of class folders; arrange it as root/train/<class>/ and root/test/<class>/.")
        super().__init__("", image_size, image_encoder, image_encoder_kwargs, batch_size, num_workers, seed, all_captions, max_bad_fraction, [root])
        self.TEMPLATES = list(templates or DEFAULT_TEMPLATES)
        self.folder_root = root

    def read(self, split: str) -> Reading | None:
        folder = read_class_folder(Path(self.folder_root) / ("train" if split == "train" else "test"), self.TEMPLATES, self.CLASS_NAMES)
        return Reading(captioned(folder), folder.reading.seen)
