"""FLIP: contrastive learning on randomly patch-dropped images (Li et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.functional import infonce_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import ImageView, Step
from vlp.views.patch_drop import PatchDrop


@OBJECTIVES.register("flip")
class FLIP(Objective):
    """CLIP's symmetric InfoNCE with the image tower run on ``1 - mask_ratio`` of the patches.

    Dropping patches makes each step cheaper (FLIP: 50% or 75% masking), so more pairs fit
    in the same compute. ``unmasked_from`` (a fraction of training, e.g. 0.9) switches to
    the full image for the rest of training, FLIP's short unmasked tuning phase that closes
    the gap between masked training and unmasked inference. ``image_view`` names another
    YAML view to read instead of its own ``patch_drop`` view. Optional ``sample_weight``
    in the batch extras weights pairs, as in ``clip``.
    """

    def __init__(
        self,
        mask_ratio: float = 0.5,
        unmasked_from: float | None = None,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        image_view: str | None = None,
        text_view: str = "full",
    ) -> None:
        super().__init__()
        if unmasked_from is not None and not 0.0 <= unmasked_from <= 1.0:
            raise ConfigError(f"flip unmasked_from is a fraction of training in [0, 1], got {unmasked_from}.")
        self.view = PatchDrop(mask_ratio)
        self.own_view = image_view is None
        self.image_view = f"flip_mask{round(mask_ratio * 100)}" if image_view is None else image_view
        self.text_view = text_view
        self.unmasked_from = unmasked_from
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def image_views(self) -> dict[str, ImageView]:
        return {self.image_view: self.view} if self.own_view else {}

    def current_view(self, progress: float) -> str:
        unmasked = self.unmasked_from is not None and progress >= self.unmasked_from
        return "full" if unmasked else self.image_view

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        view = self.current_view(step.progress)
        images, texts = step.gathered("image", view), step.gathered("text", self.text_view)
        loss = infonce_loss(images, texts, scale, step.batch.extras.get("sample_weight"))
        return {"loss": loss, "logit_scale": scale.detach(), "masked": torch.tensor(float(view != "full"))}
