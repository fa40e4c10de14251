"""AlignCLIP's intra-modality separation, an add-on that narrows the modality gap (Eslami & de Melo, 2025)."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import intra_modality_separation_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("alignclip_separation")
class IntraModalitySeparation(Objective):
    """IMSep on images (and optionally texts), added to a contrastive loss in the same YAML.

    The paper rescales negatives by the distance between the pairs' captions embedded by
    a frozen sentence encoder; offline we use the detached text embeddings of the pairs.
    AlignCLIP weights this term 0.5 (the objective's YAML ``weight``). Optional
    ``sample_weight`` in the batch extras scales each sample's term.
    """

    def __init__(self, separate_image: bool = True, separate_text: bool = False, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0, image_view: str = "full", text_view: str = "full") -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        if not (separate_image or separate_text):
            raise ValueError("alignclip_separation needs separate_image or separate_text (or both) set to true.")
        self.separate_image, self.separate_text = separate_image, separate_text
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        images, texts = step.gathered("image", self.image_view), step.gathered("text", self.text_view)
        weights = step.batch.extras.get("sample_weight")
        terms = {}
        if self.separate_image:
            terms["image"] = intra_modality_separation_loss(images, texts, texts, scale, weights)
        if self.separate_text:
            terms["text"] = intra_modality_separation_loss(texts, images, texts, scale, weights)
        loss = sum(terms.values())
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}, "logit_scale": scale.detach()}
