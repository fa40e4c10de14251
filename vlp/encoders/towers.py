"""The shared shape of a tower: a backbone plus a projection into the joint space."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from vlp.encoders.features import Features
from vlp.registry import ConfigError


class Tower(nn.Module):
    """Base class of image and text towers.

    Subclasses build ``self.backbone`` and implement :meth:`backbone_features`, which
    returns ``(pooled, tokens, mask)``; the tower adds the projection head.
    Image towers that are ViTs also implement :meth:`patch_features` (the token-level
    entry used by :meth:`forward_patches`) and set ``patch_size``, ``patch_grid`` and
    ``num_prefix_tokens``.
    """

    width: int
    # State-dict prefixes (relative to the tower) whose weights come from a local pretrained
    # source named in the config; frozen weights under them are left out of checkpoints.
    pretrained_parts: tuple[str, ...] = ()
    # True where the projection is a frozen identity by construction (SigLIP's image head).
    projection_is_fixed: bool = False
    # Image towers over patches: (height, width) of one patch, the grid of patches, and the
    # number of class/register tokens before the patches. None/0 where they do not apply.
    patch_size: tuple[int, int] | None = None
    patch_grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.width = width
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.projection.weight, std=width**-0.5)

    def backbone_features(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, *inputs: Tensor) -> Features:
        pooled, tokens, mask = self.backbone_features(*inputs)
        return Features(
            embedding=self.projection(pooled),
            pooled=pooled,
            tokens=tokens,
            mask=mask,
            project=self.projection,
        )

    def patch_features(
        self, images: Tensor, keep: Tensor | None, drop_positions: Tensor | None, layers: Sequence[int]
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(pooled, patch tokens, intermediate layers) on the kept patches; ViT image towers implement it."""
        raise ConfigError(
            f"The {type(self).__name__} tower cannot run on a subset of patches; use a ViT image tower "
            f"(timm VisionTransformer, open_clip, hf_clip or hf_siglip) for patch dropping."
        )

    def forward_patches(
        self,
        images: Tensor,
        keep: Tensor | None = None,
        drop_positions: Tensor | None = None,
        layers: Sequence[int] = (),
    ) -> Features:
        """The image tower on the patches ``keep`` (B, K) of each image (None: all), optionally
        without positional embeddings where ``drop_positions`` (B,) is True, with the block
        outputs ``layers`` (indices, negative from the end). The returned features carry them."""
        pooled, tokens, intermediates = self.patch_features(images, keep, drop_positions, tuple(layers))
        return Features(
            embedding=self.projection(pooled),
            pooled=pooled,
            tokens=tokens,
            mask=torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device),
            project=self.projection,
            kept=keep,
            positions_dropped=drop_positions,
            layers=intermediates,
        )

    @property
    def num_patches(self) -> int | None:
        return None if self.patch_grid is None else self.patch_grid[0] * self.patch_grid[1]
