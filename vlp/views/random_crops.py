"""Random resized crops of the batch's images (DINO / SILC multi-crop), made on the device.

Crops are cut from the training images as the datamodule delivered them and resized
back to the tower's input size, so any image tower runs them unchanged. Rows are
crop-major: rows ``[c·B, (c+1)·B)`` are crop ``c`` of every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchvision.ops import roi_align

from vlp.batch import Batch
from vlp.encoders.features import Features
from vlp.registry import VIEWS, ConfigError


def random_crop_boxes(count: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None) -> Tensor:
    """(count, 4) boxes x0, y0, x1, y1 in pixels, with area fraction in ``scale`` and aspect ratio in ``ratio``.

    Area and log-aspect are drawn uniformly as in torchvision's RandomResizedCrop; a box
    that does not fit is clipped to the image (torchvision retries, then falls back to a
    centre crop; clipping keeps the draw vectorised).
    """
    area = torch.empty(count).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(count).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    box_w = (area * aspect).sqrt().clamp(1.0, width)
    box_h = (area / aspect).sqrt().clamp(1.0, height)
    x0 = torch.rand(count, generator=generator) * (width - box_w)
    y0 = torch.rand(count, generator=generator) * (height - box_h)
    return torch.stack([x0, y0, x0 + box_w, y0 + box_h], dim=1)


def random_resized_crops(images: Tensor, crops: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
                         flip: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """``crops`` random resized crops of each image, (crops·B, C, H, W), bilinear, crop-major."""
    batch, _, height, width = images.shape
    boxes = random_crop_boxes(crops * batch, height, width, scale, ratio, generator).to(images.device, images.dtype)
    owners = torch.arange(batch, device=images.device, dtype=images.dtype).repeat(crops).unsqueeze(1)
    out = roi_align(images, torch.cat([owners, boxes], dim=1), (height, width), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    if flip:
        flipped = (torch.rand(crops * batch, generator=generator) < 0.5).to(images.device)
        out = torch.where(flipped.view(-1, 1, 1, 1), out.flip(-1), out)
    return out


@VIEWS.register("random_crops")
@dataclass(frozen=True)
class RandomCrops:
    """The image tower on ``crops`` random resized crops per image (SILC's local crops: small ``scale``).

    ``one_per_sample`` is False: the view has crops·B rows, crop-major.
    """

    tower: ClassVar[str] = "image"
    one_per_sample: ClassVar[bool] = False
    crops: int = 4
    scale: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if self.crops < 1 or len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(
                f"random_crops needs crops >= 1 and 0 < scale[0] <= scale[1] <= 1 (area fractions), got crops={self.crops}, "
                f"scale={list(self.scale)}."
            )

    def __call__(self, encoder, batch: Batch) -> Features:
        return encoder.image_tower(random_resized_crops(batch.images, self.crops, self.scale))
