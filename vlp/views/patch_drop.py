"""A patch-dropped image view: FLIP's masked image, MAE's visible patches, CFM-ViT's masked input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlp.batch import Batch
from vlp.encoders.features import Features
from vlp.encoders.patch_tokens import random_keep_indices
from vlp.registry import VIEWS, ConfigError


def kept_count(num_patches: int, mask_ratio: float) -> int:
    """Patches kept at ``mask_ratio``: round(N (1 - ratio)), at least one."""
    return max(1, round(num_patches * (1.0 - mask_ratio)))


@VIEWS.register("patch_drop")
@dataclass(frozen=True)
class PatchDrop:
    """The image tower on a uniformly random ``1 - mask_ratio`` of each image's patches.

    ``Features.kept`` holds the kept indices. ``position_dropout`` is the probability
    that a sample runs without positional embeddings (CFM-ViT's PED). ``layers`` asks
    for intermediate block outputs. Equal settings are one view: objectives declaring
    the same view share one forward pass per step.
    """

    tower: ClassVar[str] = "image"
    mask_ratio: float = 0.5
    position_dropout: float = 0.0
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"patch_drop mask_ratio must be in [0, 1), got {self.mask_ratio}; it is the fraction of patches dropped.")
        if not 0.0 <= self.position_dropout <= 1.0:
            raise ConfigError(f"patch_drop position_dropout must be a probability in [0, 1], got {self.position_dropout}.")
        object.__setattr__(self, "layers", tuple(self.layers))

    def __call__(self, encoder, batch: Batch) -> Features:
        tower = encoder.image_tower
        if tower.num_patches is None:
            raise ConfigError(f"The {type(tower).__name__} image tower has no patch grid; patch dropping needs a ViT tower.")
        size, device = len(batch), batch.images.device
        keep = None
        if self.mask_ratio > 0.0:
            keep = random_keep_indices(size, tower.num_patches, kept_count(tower.num_patches, self.mask_ratio), device)
        drop = torch.rand(size, device=device) < self.position_dropout if self.position_dropout > 0 else None
        return tower.forward_patches(batch.images, keep=keep, drop_positions=drop, layers=self.layers)
