"""Stored augmentations (MobileCLIP's reinforced datasets): draw a random resized crop's parameters once, replay them exactly.

The parameters are drawn by torchvision's own ``RandomResizedCrop.get_params`` under a
per-sample seed, and applied by the same ``resized_crop`` call ``RandomResizedCrop``
makes, so a replayed crop is bit-identical to the online augmentation it stands for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

SCALE = (0.08, 1.0)  # torchvision's (and MobileCLIP's) RandomResizedCrop defaults
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Crop:
    """A random resized crop: top, left, height, width in source pixels, and a horizontal flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def draw_crops(image: Image.Image, count: int, seed: int, scale: tuple[float, float] = SCALE,
               ratio: tuple[float, float] = RATIO, flip: bool = False) -> list[Crop]:
    """``count`` crops of ``image`` drawn by torchvision under ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        crops = []
        for _ in range(count):
            top, left, height, width = RandomResizedCrop.get_params(image, list(scale), list(ratio))
            crops.append(Crop(top, left, height, width, bool(flip and torch.rand(()) < 0.5)))
    return crops


def apply_crop(image: Image.Image, crop: Crop, size: int) -> torch.Tensor:
    """The crop resized to ``size`` x ``size`` (bicubic, antialiased), flipped if drawn so: uint8 (3, size, size)."""
    out = TF.resized_crop(image.convert("RGB"), crop.top, crop.left, crop.height, crop.width, [size, size],
                          InterpolationMode.BICUBIC, antialias=True)
    if crop.flip:
        out = TF.hflip(out)
    return TF.pil_to_tensor(out)
