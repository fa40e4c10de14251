"""DINO / SILC multi-crop views, cut from the source image in the data workers (``data.multi_crop``).

A few *global* crops (a large area fraction, resized to the tower's input size) and
several *local* crops (a small area fraction, at a lower resolution: 96 px beside 224 in
DINO and SILC) are cut from the image as it was decoded, before the usual resize, so a
local crop keeps the source's detail instead of upsampling an already-resized image.
Boxes are torchvision's ``RandomResizedCrop`` draws (area fraction in ``scale``,
log-uniform aspect ratio in 3/4..4/3); crops are not flipped (captions say left and right).
Crops travel in ``batch.extras`` as uint8 where the loader keeps uint8, (B, K, C, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vlp.config.schema import check_values
from vlp.data.transforms import DRAFT_MARGIN, ImageTransform
from vlp.registry import ConfigError

GLOBAL_CROPS = "global_crops"  # batch.extras key: (B, G, C, size, size)
LOCAL_CROPS = "local_crops"  # batch.extras key: (B, L, C, local_size, local_size)
IMAGE_EXTRAS = (GLOBAL_CROPS, LOCAL_CROPS)  # extras that are images: uint8 -> [0, 1] floats like batch.images
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's and timm's default aspect-ratio range
LOCAL_FRACTION = 96 / 224  # DINO's and SILC's local crop side over the tower's input side


@dataclass(frozen=True)
class MultiCrop:
    """Cut ``global_crops`` crops at ``size`` and ``local_crops`` crops at ``local_size`` from one image.

    ``size`` (the tower's input side) and ``interpolation`` come from the datamodule; the
    rest are the YAML keys of ``data.multi_crop``. ``local_size`` defaults to 96/224 of
    ``size`` (a ViT needs it to be a multiple of its patch size: set it then).
    """

    size: int
    global_crops: int = 2
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size: int | None = None
    interpolation: InterpolationMode = InterpolationMode.BICUBIC

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_scale", tuple(float(s) for s in self.global_scale))
        object.__setattr__(self, "local_scale", tuple(float(s) for s in self.local_scale))
        if self.local_size is None:
            object.__setattr__(self, "local_size", max(1, round(self.size * LOCAL_FRACTION)))
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ConfigError(f"data.multi_crop.{name} is {[low, high]} but must be area fractions 0 < low <= high <= 1; fix the value.")
        if self.global_crops < 1 or self.local_crops < 1 or self.local_size < 1:
            raise ConfigError(
                f"data.multi_crop needs global_crops >= 1, local_crops >= 1 and local_size >= 1 (got {self.global_crops}, "
                f"{self.local_crops}, {self.local_size}); fix the value."
            )

    def __call__(self, source: Image.Image | Tensor) -> dict[str, Tensor]:
        """The crops of ``source`` (a PIL image, or a (C, H, W) tensor), each family stacked (K, C, H, W)."""
        return {
            GLOBAL_CROPS: torch.stack([self.cut(source, self.box(source, self.global_scale), self.size) for _ in range(self.global_crops)]),
            LOCAL_CROPS: torch.stack([self.cut(source, self.box(source, self.local_scale), self.local_size) for _ in range(self.local_crops)]),
        }

    @staticmethod
    def box(source: Image.Image | Tensor, scale: tuple[float, float]) -> tuple[int, int, int, int]:
        """A random (top, left, height, width) covering ``scale`` of the area, as ``RandomResizedCrop`` draws it."""
        return transforms.RandomResizedCrop.get_params(source, list(scale), list(CROP_RATIO))

    def cut(self, source: Image.Image | Tensor, box: tuple[int, int, int, int], side: int) -> Tensor:
        """The ``box`` of ``source`` resized to ``side`` x ``side`` (antialiased); PIL sources give uint8."""
        crop = F.resized_crop(source, *box, [side, side], interpolation=self.interpolation, antialias=True)
        return F.pil_to_tensor(crop) if isinstance(crop, Image.Image) else crop

    def decode_short_side(self, margin: float) -> int:
        """The short side a draft-decoded JPEG must keep so the smallest crop is still downsampled ``margin`` times."""
        return max(math.ceil(margin * side / math.sqrt(scale[0] * CROP_RATIO[0]))
                   for side, scale in ((self.size, self.global_scale), (self.local_size, self.local_scale)))


def draft_short_side(transform: ImageTransform, multi_crop: MultiCrop | None) -> int | None:
    """The short side a JPEG may be draft-decoded to: the transform's, raised so the smallest crop keeps its pixels."""
    side = transform.decode_short_side
    if multi_crop is None or side is None:
        return side
    return max(side, multi_crop.decode_short_side(DRAFT_MARGIN))


def multi_crop_from_config(values: dict[str, Any] | None, size: int,
                           interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> MultiCrop | None:
    """``data.multi_crop`` (None: no crops) checked and built for a tower input side of ``size``."""
    if values is None:
        return None
    check_values(dict(values), MultiCrop, "data.multi_crop", lambda _: "the experiment's data section", injected=("size", "interpolation"))
    return MultiCrop(size=size, interpolation=interpolation, **values)
