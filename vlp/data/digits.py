"""scikit-learn's bundled handwritten digits (real 8x8 scans) with templated captions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from vlp.data.base import ImageCaptionDataset, ImageTextDataModule, retrieval_set
from vlp.data.image_folder import LinearProbeSet
from vlp.evaluation.base import RetrievalSet, ZeroShotTask
from vlp.registry import DATAMODULES

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a handwritten digit {word}", "the number {word}", "a scanned {word}", "{numeral} written by hand")
PROMPT_TEMPLATES = ["a handwritten digit {}", "the number {}", "a scanned {}"]


def load_digit_images(image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as uint8 RGB (N, 3, S, S), upsampled bilinearly, and their labels."""
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    resized = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (resized.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, digits.target


@DATAMODULES.register("digits")
class DigitsDataModule(ImageTextDataModule):
    """80/20 seeded split; each image gets two captions from different templates."""

    def __init__(
        self, image_size: int = 32, val_fraction: float = 0.2, batch_size: int = 128, num_workers: int = 0, seed: int = 0, all_captions: bool = False
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, all_captions=all_captions)
        self.image_size = image_size
        self.val_fraction = val_fraction

    def build(self) -> None:
        images, labels = load_digit_images(self.image_size)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(labels))
        n_val = int(len(labels) * self.val_fraction)
        captions = []
        for label in labels:
            picks = rng.choice(len(CAPTION_TEMPLATES), size=2, replace=False)
            captions.append([CAPTION_TEMPLATES[p].format(word=WORDS[label], numeral=label) for p in picks])
        val, train = order[:n_val], order[n_val:]
        self.train_set = ImageCaptionDataset(images[train], [captions[i] for i in train])
        self.val_set = ImageCaptionDataset(images[val], [captions[i] for i in val])
        self.val_labels = torch.as_tensor(labels[val])

    def caption_corpus(self) -> list[str]:
        return [t.format(word=w, numeral=n) for n, w in enumerate(WORDS) for t in CAPTION_TEMPLATES]

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        images = self.val_set.images.float() / 255
        return [ZeroShotTask("digit", list(WORDS), PROMPT_TEMPLATES, images, self.val_labels)]

    def retrieval_sets(self) -> list[RetrievalSet]:
        return [retrieval_set("digits_val", self.val_set)]

    def linear_probe_sets(self) -> list[LinearProbeSet]:
        """The digit: fit on training images (labelled by their captions), test on validation images."""
        digit_of = {t.format(word=w, numeral=n): n for n, w in enumerate(WORDS) for t in CAPTION_TEMPLATES}
        train_labels = torch.tensor([digit_of[captions[0]] for captions in self.train_set.captions])
        train_images, val_images = self.train_set.images.float() / 255, self.val_set.images.float() / 255
        return [LinearProbeSet("digit", list(WORDS), train_images, train_labels, val_images, self.val_labels)]
