"""HN-NCE: InfoNCE with hard negatives up-weighted by similarity (Radenovic et al., 2023, DiHT)."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import hn_nce_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("hn_nce")
class HardNegativeNCE(Objective):
    """HN-NCE with CLIP's learnable temperature; DiHT uses alpha=1, beta=0.5.

    ``beta`` concentrates the denominator on negatives similar to the anchor; ``alpha``
    keeps (1) or drops (0, DHN-NCE) the positive from the denominator. Optional
    ``sample_weight`` in the batch extras scales each pair's loss.
    """

    def __init__(
        self, alpha: float = 1.0, beta: float = 0.5, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
        image_view: str = "full", text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.alpha, self.beta = alpha, beta
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        loss = hn_nce_loss(
            step.gathered("image", self.image_view), step.gathered("text", self.text_view), scale, self.alpha, self.beta,
            step.batch.extras.get("sample_weight"),
        )
        return {"loss": loss, "logit_scale": scale.detach()}
