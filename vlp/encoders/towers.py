"""The shared shape of a tower: a backbone plus a projection into the joint space."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.encoders.features import Features


class Tower(nn.Module):
    """Base class of image and text towers.

    Subclasses build ``self.backbone`` and implement :meth:`backbone_features`, which
    returns ``(pooled, tokens, mask)``; the tower adds the projection head.
    """

    width: int
    # State-dict prefixes (relative to the tower) whose weights come from a local pretrained
    # source named in the config; frozen weights under them are left out of checkpoints.
    pretrained_parts: tuple[str, ...] = ()
    # True where the projection is a frozen identity by construction (SigLIP's image head).
    projection_is_fixed: bool = False

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
