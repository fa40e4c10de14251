"""Image transforms taken from the image encoder's own timm data config, minus normalisation.

The image tower normalises with its pretrained mean/std itself (``TimmImageEncoder``), so
the data pipeline stops at float pixels in [0, 1]; size, interpolation and crop
percentage come from the encoder's config so a pretrained encoder sees what it expects.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from torchvision import transforms

from vlp.registry import ConfigError

Transform = Callable[[Image.Image], torch.Tensor]

# Without an encoder: resize the shorter side to the size and centre-crop (crop_pct 1).
DEFAULT_CONFIG = {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
# Mild CLIP-style training crop (open_clip uses scale (0.9, 1)); no flips: captions say left/right.
TRAIN_CROP_SCALE = (0.9, 1.0)


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


def image_transform(config: dict[str, Any], train: bool) -> Transform:
    """PIL image -> float tensor (3, H, W) in [0, 1], built by timm's ``create_transform``."""
    kwargs: dict[str, Any] = {"scale": TRAIN_CROP_SCALE, "hflip": 0.0, "color_jitter": None} if train else {
        "crop_pct": config["crop_pct"], "crop_mode": config.get("crop_mode", "center")}
    timm_transform = create_transform(config["input_size"], is_training=train, interpolation=config["interpolation"], normalize=False, **kwargs)
    return transforms.Compose([timm_transform, transforms.ConvertImageDtype(torch.float32)])
