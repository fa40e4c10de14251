"""LLaVE's hardness-weighted contrastive loss (Lan et al., 2025)."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import llave_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("llave")
class HardnessWeightedContrastive(Objective):
    """InfoNCE whose negatives are weighted by exp(alpha * cosine), detached (a reward model).

    ``alpha`` sets how strongly hard negatives count; 0 is InfoNCE. Optional
    ``sample_weight`` in the batch extras scales each pair's loss.
    """

    def __init__(
        self, alpha: float = 9.0, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
        image_view: str = "full", text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.alpha = alpha
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        loss = llave_loss(
            step.gathered("image", self.image_view), step.gathered("text", self.text_view), scale, self.alpha,
            step.batch.extras.get("sample_weight"),
        )
        return {"loss": loss, "logit_scale": scale.detach()}
