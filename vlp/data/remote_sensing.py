"""Remote sensing: RSICD, UCM-Captions and Sydney-Captions (Karpathy JSON) and RS5M (WebDataset shards).

RSICD names its images ``<scene>_<n>.jpg`` and UCM-Captions numbers the UC Merced
land-use images 1..2100 in 21 alphabetical classes of 100, so both carry a built-in
zero-shot scene-classification task on their evaluation split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vlp.data.karpathy import KarpathyDataModule
from vlp.data.web_shards import WebDatasetDataModule
from vlp.evaluation.base import ZeroShotTask
from vlp.registry import DATAMODULES

TEMPLATES = ["a satellite image of {}.", "an aerial photograph of {}.", "a remote sensing image of {}.", "{} seen from above."]
UCM_CLASSES = [
    "agricultural land", "airplane", "baseball diamond", "beach", "buildings", "chaparral", "dense residential area",
    "forest", "freeway", "golf course", "harbor", "intersection", "medium residential area", "mobile home park",
    "overpass", "parking lot", "river", "runway", "sparse residential area", "storage tanks", "tennis court",
]
UCM_FOLDERS = {n.replace(" land", "").replace(" area", "").replace(" ", ""): n for n in UCM_CLASSES}  # UCMerced_LandUse folders
RSICD_SCENE = re.compile(r"^([a-z]+)_\d+$")
RSICD_NAMES = {"baseballfield": "baseball field", "bareland": "bare land", "denseresidential": "dense residential area",
               "mediumresidential": "medium residential area", "sparseresidential": "sparse residential area",
               "playground": "playground", "railwaystation": "railway station", "storagetanks": "storage tanks"}


class RemoteSensingCaptions(KarpathyDataModule):
    """A Karpathy-JSON remote-sensing caption set: ``root`` holds the JSON and the image folder."""

    ANNOTATIONS = ""
    ANNOTATION_FOLDERS: tuple[str, ...] = ("",)  # where copies keep the JSON, relative to root, first found wins
    IMAGES = ""
    TEMPLATES = TEMPLATES
    CLASS_NAMES = UCM_FOLDERS

    def __init__(
        self,
        root: str,
        annotations: str | None = None,
        images: str | None = None,
        eval_split: str = "test",
        **common: Any,
    ) -> None:
        if annotations is None:
            candidates = [Path(root) / folder / self.ANNOTATIONS for folder in self.ANNOTATION_FOLDERS]
            annotations = str(next((path for path in candidates if path.is_file()), candidates[0]))
        super().__init__(annotations=str(Path(root) / annotations), eval_split=eval_split,
                         root=str(Path(root) / (images or self.IMAGES)), **common)

    def scene(self, filename: str) -> str | None:
        """The scene class of an image from its file name, or None when the name does not say."""
        return None

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        scenes = {r.key: self.scene(Path(r.image).stem) for r in self.val_records}
        records = [r for r in self.val_records if scenes[r.key] is not None]
        if not records:
            return super().zero_shot_tasks()
        classes = sorted({scenes[r.key] for r in records})
        good, images = self.eval_images(records, self.root, f"{self.registry_name} scenes")
        labels = torch.tensor([classes.index(scenes[r.key]) for r in good])
        return [ZeroShotTask(f"{self.registry_name}_scene", classes, self.TEMPLATES, images, labels)] + super().zero_shot_tasks()


@DATAMODULES.register("rsicd")
class RsicdDataModule(RemoteSensingCaptions):
    """RSICD: 10,921 images, 5 captions each; ``dataset_rsicd.json`` (in ``root`` or, as many copies keep it, ``annotations_rsicd/``) and ``RSICD_images/``."""

    ANNOTATIONS, IMAGES = "dataset_rsicd.json", "RSICD_images"
    ANNOTATION_FOLDERS = ("", "annotations_rsicd")

    def scene(self, filename: str) -> str | None:
        match = RSICD_SCENE.match(filename)
        return None if match is None else RSICD_NAMES.get(match.group(1), match.group(1))


@DATAMODULES.register("ucm_captions")
class UcmCaptionsDataModule(RemoteSensingCaptions):
    """UCM-Captions: the 2,100 UC Merced images (``imgs/<n>.tif``), 5 captions each; ``dataset.json``."""

    ANNOTATIONS, IMAGES = "dataset.json", "imgs"

    def scene(self, filename: str) -> str | None:
        return UCM_CLASSES[(int(filename) - 1) // 100] if filename.isdigit() and 1 <= int(filename) <= 2100 else None


@DATAMODULES.register("sydney_captions")
class SydneyCaptionsDataModule(RemoteSensingCaptions):
    """Sydney-Captions: 613 images (``imgs/<n>.tif``), 5 captions each; ``dataset.json``."""

    ANNOTATIONS, IMAGES = "dataset.json", "imgs"


@DATAMODULES.register("rs5m")
class Rs5mDataModule(WebDatasetDataModule):
    """RS5M's WebDataset shards, with remote-sensing prompts for ``zero_shot_folders``.

    As published (``{pub11,rs3}-train-{0000..0031}.tar``, read by the dataset's own
    ``dataloader.py`` in github.com/om-ai-lab/RS5M) each sample is ``<key>.img_content``
    (image bytes), ``<key>.img_name`` and ``<key>.caption``; the shards ship no sample
    count, so ``epoch_samples`` must be set.
    """

    TEMPLATES = TEMPLATES
    CLASS_NAMES = UCM_FOLDERS

    def __init__(self, train: list[str], image_key: str | None = "img_content", caption_key: str | None = "caption", **common: Any) -> None:
        super().__init__(train=train, image_key=image_key, caption_key=caption_key, **common)
