"""CLIP / ALIGN: symmetric InfoNCE over the global batch (Radford et al., 2021)."""

from __future__ import annotations

from torch import Tensor

from vlp.encoders.pretrained_scales import read_scales
from vlp.functional import infonce_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step
from vlp.tiled import check_tile_size, tiled_infonce_loss


@OBJECTIVES.register("clip")
class CLIPContrastive(Objective):
    """Symmetric InfoNCE with a learnable temperature; optional ``sample_weight`` extras weight pairs.

    The logit scale is stored as a log and initialised at ``1/init_temperature``
    (CLIP: 1/0.07); after each optimizer step it is clamped to at most ``max_logit_scale`` (CLIP: 100).
    ``init_from`` reads it instead from a pretrained CLIPModel directory or open_clip file.
    ``image_view`` / ``text_view`` name the views it contrasts (FLIP: a patch_drop view).
    ``tile_size`` computes the same loss in tiles of that many rows and columns
    (``vlp.tiled``), so memory no longer grows with the square of the global batch.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
        init_from: str | None = None,
        tile_size: int | None = None,
        image_view: str = "full",
        text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.tile_size = check_tile_size(tile_size)
        pretrained = read_scales(init_from).log_logit_scale if init_from else None
        self.logit_scale = LogitScale(init_temperature, max_logit_scale, learn_temperature, pretrained)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        weight = step.batch.extras.get("sample_weight")
        if self.tile_size:  # tiles gather the raw embeddings themselves
            images, texts = step.image(self.image_view).embedding, step.text(self.text_view).embedding
            loss = tiled_infonce_loss(images, texts, scale, self.tile_size, weight)
        else:
            images, texts = step.gathered("image", self.image_view), step.gathered("text", self.text_view)
            loss = infonce_loss(images, texts, scale, weight)
        return {"loss": loss, "logit_scale": scale.detach()}
