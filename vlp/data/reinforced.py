"""The ``reinforced`` datamodule: shards written by ``tools/reinforce.py``, each sample's stored crop replayed.

Training draws one of the K stored augmentations of every image, replays it exactly
(:mod:`vlp.data.replay`) at ``image_size``, and puts the teachers' stored embeddings of
that augmentation and of the caption into the batch extras read by the
``mobileclip_distillation`` objective. Only the first caption is used: the teachers'
text embeddings were computed for it. Validation shards are decoded as usual.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import numpy as np
import torch
from webdataset.utils import pytorch_worker_info

from vlp.data.decode import open_image
from vlp.data.quality import BAD_RECORD, MISSING_IMAGE, BadSample, Skipped
from vlp.data.replay import Crop, apply_crop
from vlp.data.shards import IMAGE_EXTENSIONS, captions_of
from vlp.data.web_shards import WebDatasetDataModule
from vlp.objectives.mobileclip_distillation import TEACHER_IMAGES, TEACHER_SCALES, TEACHER_TEXTS
from vlp.registry import DATAMODULES, ConfigError

REINFORCED_MEMBERS = ("aug.json", "teacher_image.npy", "teacher_text.npy", "teacher.json")


class ReplayDecode:
    """Raw reinforced sample -> (uint8 image of a replayed stored crop, [first caption], teacher extras) or Skipped."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.rng: random.Random | None = None

    def _random(self) -> random.Random:
        if self.rng is None:  # one stream per rank and worker, made where the worker runs
            rank, _, worker, _ = pytorch_worker_info()
            self.rng = random.Random(self.seed * 7919 + rank * 131 + worker)
        return self.rng

    def __call__(self, sample: dict[str, Any] | Skipped) -> tuple | Skipped:
        if isinstance(sample, Skipped):
            return sample
        key = sample.get("__key__", "")
        try:
            missing = [m for m in REINFORCED_MEMBERS if m not in sample]
            if missing:
                raise BadSample(BAD_RECORD, f"{key} lacks {missing}: not written by tools/reinforce.py")
            name = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
            if name is None:
                raise BadSample(MISSING_IMAGE, key)
            captions = captions_of(sample)[:1]
            image = open_image(sample[name])
        except BadSample as bad:
            return Skipped(bad.cause, key)
        crops = json.loads(sample["aug.json"])["crops"]
        k = self._random().randrange(len(crops))
        teacher_images = np.load(io.BytesIO(sample["teacher_image.npy"]))[:, k]
        extras = {
            "key": key,
            "crop_index": k,
            TEACHER_IMAGES: torch.from_numpy(np.ascontiguousarray(teacher_images)),
            TEACHER_TEXTS: torch.from_numpy(np.load(io.BytesIO(sample["teacher_text.npy"]))),
            TEACHER_SCALES: torch.tensor(json.loads(sample["teacher.json"])["logit_scales"], dtype=torch.float32),
        }
        return apply_crop(image, Crop(**crops[k]), self.size), captions, extras


@DATAMODULES.register("reinforced")
class ReinforcedDataModule(WebDatasetDataModule):
    """``webdataset`` over reinforced shards: training replays a random stored crop per image (see module doc)."""

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        if self.multi_crop is not None:
            raise ConfigError("data.multi_crop does not apply to reinforced shards (training replays a stored crop); remove it.")

    def train_decoder(self, transform):
        return ReplayDecode(self.config["input_size"][-1], self.seed)
