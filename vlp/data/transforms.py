"""Image transforms taken from the image encoder's own timm data config, minus normalisation.

The image tower normalises with its pretrained mean/std itself (``TimmImageEncoder``), so
the data pipeline stops at pixels; size, interpolation and crop percentage come from the
encoder's config so a pretrained encoder sees what it expects. Evaluation is timm's
own PIL transform (the published protocol). Training crops with timm's random box but
resizes on uint8 tensors with torch's antialiased kernel (:class:`RandomResizedCropPixels`):
about a fifth of PIL's CPU time, the loader workers' largest cost. Training loaders keep the
pixels as uint8 (a quarter of float32's bytes through collation and worker pipes) and
the datamodule divides by 255 on the device after transfer (:func:`unit_float`), which is
bit for bit what a float transform gives. A JPEG much larger than the target is decoded
at a reduced scale (PIL's draft mode, libjpeg's DCT scaling), never below
``DRAFT_MARGIN`` times the size the resize step needs; see :meth:`ImageTransform.decode_short_side`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode
from timm.models import get_pretrained_cfg
from torch import Tensor
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as F

from vlp.registry import ConfigError


# Without an encoder: resize the shorter side to the size and centre-crop (crop_pct 1).
DEFAULT_CONFIG = {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
# Mild CLIP-style training crop (open_clip uses scale (0.9, 1)); no flips: captions say left/right.
TRAIN_CROP_SCALE = (0.9, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)  # timm's default aspect-ratio range of the random crop
# A draft-decoded JPEG keeps at least this many times the pixels (per side) that the resize
# needs, so the resize still downsamples by 2x or more. The result is not bit-identical to a
# full decode (libjpeg's scaled IDCT acts as a slightly different antialiasing filter): on
# scikit-learn's photos the mean absolute difference is 0.3-4 grey levels of 255 (the 99th
# percentile 9-14 at 1-2 mean; tests/test_data_throughput.py bounds the mean at 2.5 for
# the 640 x 427 originals, tools/bench_data.py prints it for a large photo).
# ``image_transform(..., draft_margin=None)`` always decodes in full.
DRAFT_MARGIN = 2.0


def data_config(image_size: int, image_encoder: str | None = None, image_encoder_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode`` (and mean/std, unused here).

    With ``image_encoder`` (a timm model name) the config is timm's ``resolve_data_config``
    of that model's pretrained config, with ``img_size`` from its kwargs when given; the
    model itself is not built.
    """
    if image_encoder is None:
        return {"input_size": (3, image_size, image_size), "mean": (0.0,) * 3, "std": (1.0,) * 3, **DEFAULT_CONFIG}
    pretrained = get_pretrained_cfg(image_encoder)
    if pretrained is None:
        raise ConfigError(f'timm has no pretrained config for image_encoder "{image_encoder}"; give a timm model name or leave image_encoder unset and set image_size.')
    args = {"img_size": (image_encoder_kwargs or {})["img_size"]} if "img_size" in (image_encoder_kwargs or {}) else {}
    return resolve_data_config(args, pretrained_cfg=pretrained.to_dict())


class RandomResizedCropPixels:
    """Training crop of uint8 (C, H, W) pixels: timm's random box, resized by torch's antialiased uint8 kernel.

    The box is drawn by timm's ``RandomResizedCropAndInterpolation.get_params`` (Python's
    ``random``, as the PIL transform draws it), so only the resampling differs from timm's
    PIL path. Torch's uint8 kernel is modelled on Pillow's (same filters, fixed-point
    weights): on scikit-learn's photos at 32-800 px the mean difference is under 0.005
    grey levels, at most 1 when downsampling and 2 when upsampling
    (tests/test_data_transforms.py); pure noise upsampled along one side and downsampled
    along the other can differ by up to ~25 levels at single pixels.
    Pixels stored (H, W, C), as ``pil_to_tensor`` leaves them, take torch's fastest path.
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], interpolation: str) -> None:
        self.size = tuple(size)
        self.scale = scale
        self.ratio = ratio
        self.interpolation = str_to_interp_mode(interpolation)

    def __call__(self, pixels: Tensor) -> Tensor:
        box = RandomResizedCropAndInterpolation.get_params(pixels, self.scale, self.ratio)
        return F.resized_crop(pixels, *box, list(self.size), interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"RandomResizedCropPixels(size={self.size}, scale={self.scale}, ratio={self.ratio}, interpolation={self.interpolation.value})"


class ImageTransform:
    """PIL image (or, in training, uint8 (C, H, W) pixels) -> tensor (3, H, W): uint8 pixels, or floats in [0, 1].

    Training is :class:`RandomResizedCropPixels`; evaluation is timm's ``create_transform``.
    ``decode_short_side`` is the smallest short side a JPEG may be draft-decoded to
    (None: always decode in full); :func:`vlp.data.decode.open_image` takes it.
    """

    def __init__(self, config: dict[str, Any], train: bool, dtype: torch.dtype = torch.float32, draft_margin: float | None = DRAFT_MARGIN) -> None:
        self.train = train
        if train:
            resize = RandomResizedCropPixels(config["input_size"][1:], TRAIN_CROP_SCALE, TRAIN_CROP_RATIO, config["interpolation"])
        else:
            resize = create_transform(config["input_size"], is_training=False, interpolation=config["interpolation"], normalize=False,
                                      crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode", "center"))
        steps = [resize] if dtype == torch.uint8 else [resize, transforms.ConvertImageDtype(dtype)]
        self.transform = transforms.Compose(steps)
        self.decode_short_side = None if draft_margin is None else self._resize_input_side(config, train, draft_margin)

    @staticmethod
    def _resize_input_side(config: dict[str, Any], train: bool, margin: float) -> int:
        """``margin`` x the image short side at which the resize step would upsample.

        Evaluation resizes the short side to size / crop_pct. Training resizes a random crop
        of at least ``scale[0]`` of the area with aspect ratio in ``ratio``; its short side is
        at least sqrt(scale[0] * ratio[0]) of the image's (about 0.82 for (0.9, 1), (3/4, 4/3)).
        """
        size = max(config["input_size"][1:])
        crop_side = math.sqrt(TRAIN_CROP_SCALE[0] * TRAIN_CROP_RATIO[0]) if train else config["crop_pct"]
        return math.ceil(margin * size / crop_side)

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        if self.train and isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        return self.transform(image)

    def __repr__(self) -> str:
        return f"ImageTransform(decode_short_side={self.decode_short_side}, {self.transform})"


def image_transform(config: dict[str, Any], train: bool, dtype: torch.dtype = torch.float32, draft_margin: float | None = DRAFT_MARGIN) -> ImageTransform:
    """The transform for training (random crop) or evaluation (resize, centre crop); see :class:`ImageTransform`."""
    return ImageTransform(config, train, dtype, draft_margin)


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (x / 255, exactly as a float transform computes it), contiguous; floats pass through.

    Batches of uint8 pixels arrive stored channels-last (:func:`vlp.data.base.stack_pixels`);
    the conversion writes a standard contiguous tensor in the same pass.
    """
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255) if images.dtype == torch.uint8 else images
