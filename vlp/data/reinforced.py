"""The ``reinforced`` datamodule: shards written by ``tools/reinforce.py``, each sample's stored crop replayed.

Training draws one of the K stored augmentations of every image, replays it exactly
(:mod:`vlp.data.replay`) at ``image_size``, and puts the teachers' stored embeddings of
that augmentation and of the caption into the batch extras read by the
``mobileclip_distillation`` objective. The caption is the first ground-truth caption (the
teachers' text embeddings were computed for it) or, with probability
``synthetic_caption_probability``, one of the stored synthetic captions drawn uniformly
(shards written with ``--captioner``), together with the teachers' embeddings of that
synthetic caption. Validation shards are decoded as usual.
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
SYNTHETIC_MEMBERS = ("syn.json", "teacher_syn_text.npy")  # written by tools/reinforce.py --captioner


class ReplayDecode:
    """Raw reinforced sample -> (uint8 image of a replayed stored crop, [caption], teacher extras) or Skipped.

    ``synthetic`` is the probability of training on a stored synthetic caption instead of
    the first ground-truth one; at 0 no random number is drawn for it.
    """

    def __init__(self, size: int, seed: int, synthetic: float = 0.0) -> None:
        self.size, self.seed, self.synthetic = size, seed, synthetic
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
            if self.synthetic > 0 and any(m not in sample for m in SYNTHETIC_MEMBERS):
                raise ConfigError(  # the whole dataset was reinforced without captions: not a bad sample
                    f"data.synthetic_caption_probability is {self.synthetic} but sample {key} has no synthetic captions "
                    "(syn.json); reinforce the shards with tools/reinforce.py --captioner CKPT --synthetic-captions N, "
                    "or set it to 0."
                )
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
        teacher_texts = np.load(io.BytesIO(sample["teacher_text.npy"]))
        synthetic = -1  # the ground-truth caption
        if self.synthetic > 0 and self._random().random() < self.synthetic:
            stored = json.loads(sample["syn.json"])["captions"]
            synthetic = self._random().randrange(len(stored))
            captions = [stored[synthetic]]
            teacher_texts = np.load(io.BytesIO(sample["teacher_syn_text.npy"]))[:, synthetic]
        extras = {
            "key": key,
            "crop_index": k,
            "synthetic_caption_index": synthetic,
            TEACHER_IMAGES: torch.from_numpy(np.ascontiguousarray(teacher_images)),
            TEACHER_TEXTS: torch.from_numpy(np.ascontiguousarray(teacher_texts)),
            TEACHER_SCALES: torch.tensor(json.loads(sample["teacher.json"])["logit_scales"], dtype=torch.float32),
        }
        return apply_crop(image, Crop(**crops[k]), self.size), captions, extras


@DATAMODULES.register("reinforced")
class ReinforcedDataModule(WebDatasetDataModule):
    """``webdataset`` over reinforced shards: training replays a random stored crop per image (see module doc)."""

    def __init__(self, synthetic_caption_probability: float = 0.0, **common: Any) -> None:
        super().__init__(**common)
        if self.multi_crop is not None:
            raise ConfigError("data.multi_crop does not apply to reinforced shards (training replays a stored crop); remove it.")
        if not 0.0 <= synthetic_caption_probability <= 1.0:
            raise ConfigError(
                f"data.synthetic_caption_probability must be in [0, 1], got {synthetic_caption_probability}; "
                "0 trains on ground-truth captions only."
            )
        self.synthetic_caption_probability = synthetic_caption_probability

    def train_decoder(self, transform):
        return ReplayDecode(self.config["input_size"][-1], self.seed, self.synthetic_caption_probability)
