"""AlignCLIP's official objective as one loss: CLIP and intra-modality separation sharing one temperature (Eslami & de Melo, 2025)."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import alignclip_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("alignclip")
class AlignCLIP(Objective):
    """beta * separation + alpha * (both CLIP directions, summed), one learnable logit scale for every term.

    The official training script (github.com/sarahESL/AlignCLIP, ``train_alignCLIP.sh``)
    uses alpha 1, beta 0.5 and separates both modalities. Use this objective alone in
    place of ``clip`` + ``alignclip_separation``: objectives never share parameters, so only
    one objective can give both terms the same temperature. Optional ``sample_weight``
    in the batch extras scales each sample's terms.
    """

    def __init__(
        self, alpha: float = 1.0, beta: float = 0.5, separate_image: bool = True, separate_text: bool = True,
        init_temperature: float = 0.07, max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.separate_image, self.separate_text = separate_image, separate_text
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        loss = alignclip_loss(
            step.image().embedding, step.text().embedding, scale, self.alpha, self.beta,
            self.separate_image, self.separate_text, step.batch.extras.get("sample_weight"),
        )
        return {"loss": loss, "logit_scale": scale.detach()}
