"""Checks run on the built model and data before the run directory exists.

Config validation cannot see everything: whether the data yields at least one training
step, whether its images fit the image tower, whether the data can be read at all. One
batch is collated in the main process and one image passed through the image tower, so
these mistakes cost a second and leave nothing behind, instead of a worker traceback or
a finished run of zero steps.
"""

from __future__ import annotations

from collections.abc import Sized

import lightning as L
import torch

from vlp.data.multi_crop import IMAGE_EXTRAS
from vlp.data.transforms import unit_float
from vlp.model import VLPModule
from vlp.registry import ConfigError


def preflight(module: VLPModule, datamodule: L.LightningDataModule, world_size: int = 1) -> None:
    dataset = getattr(datamodule, "train_set", None)
    batch_size = getattr(datamodule, "batch_size", None)
    if not isinstance(dataset, Sized) or not isinstance(batch_size, int):
        return  # streamed data (shards): its size is not known in advance
    if len(dataset) < batch_size * world_size:
        raise ConfigError(
            f"`data` gives {len(dataset)} training samples, fewer than one batch of data.batch_size={batch_size}"
            f"{f' on each of {world_size} processes' if world_size > 1 else ''} (incomplete batches are dropped), "
            f"so no step would run; lower data.batch_size or use more training data."
        )
    collate = datamodule.train_dataloader().collate_fn
    batch = collate([dataset[i] for i in range(batch_size)])  # raises a ConfigError when every sample is unreadable
    tower = module.encoder.image_tower
    fix = ("set data.image_size to the size the image encoder expects (for a timm ViT its model_kwargs.img_size; "
           "for a pretrained CLIP its image size)")
    _check_fits(tower, batch.images[:1], "The training images", fix)
    crop_fix = ("for a timm ViT set model.image_encoder.model_kwargs.dynamic_img_size: true and data.multi_crop.local_size "
                "to a multiple of its patch size")
    for key in IMAGE_EXTRAS:
        if key in batch.extras:
            _check_fits(tower, unit_float(batch.extras[key][:1, 0]), f"The multi-crop views {key}", crop_fix)


def _check_fits(tower: torch.nn.Module, images: torch.Tensor, what: str, fix: str) -> None:
    """One image through the tower in eval mode; a shape error becomes one ConfigError sentence ending in ``fix``."""
    was_training = tower.training
    try:
        with torch.no_grad():
            tower.eval()(images)
    except (AssertionError, RuntimeError, ValueError) as error:
        size = "x".join(str(s) for s in images.shape[-2:])
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what} ({size}) do not fit the image tower ({reason}); {fix}.") from error
    finally:
        tower.train(was_training)
