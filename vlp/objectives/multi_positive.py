"""Several captions per image as positives (multi-positive InfoNCE; DreamLIP, LoTLIP, COCO's five)."""

from __future__ import annotations

from torch import Tensor

from vlp.batch import Batch
from vlp.encoders.features import Features
from vlp.functional import multi_positive_infonce
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step, TextView


def all_captions(encoder, batch: Batch) -> Features:
    """Every caption of every image through the text tower, flattened to (B*K, ...)."""
    ids = batch.extras["captions_input_ids"].flatten(0, 1)
    mask = batch.extras["captions_attention_mask"].flatten(0, 1)
    return encoder.text_tower(ids, mask)


all_captions.one_per_sample = False  # B*K rows: its gathers exchange their own sizes


@OBJECTIVES.register("multi_positive")
class MultiPositiveContrastive(Objective):
    """InfoNCE where all K captions of an image are positives; needs ``data.all_captions: true``.

    (Sampling one caption per step needs no objective: the training collate already
    picks a random caption per image, so plain ``clip`` does it.) Optional
    ``sample_weight`` in the batch extras scales each image's loss.
    """

    def __init__(
        self, init_temperature: float = 0.07, max_logit_scale: float = 100.0, image_view: str = "full",
        text_view: str = "all_captions",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def text_views(self) -> dict[str, TextView]:
        return {"all_captions": all_captions}

    def forward(self, step: Step) -> dict[str, Tensor]:
        extras = step.batch.extras
        if "captions_valid" not in extras:
            raise KeyError("multi_positive needs every caption in the batch: set `data.all_captions: true`.")
        valid = extras["captions_valid"]
        captions = step.text(self.text_view).embedding.view(*valid.shape, -1)
        scale = self.logit_scale()
        loss = multi_positive_infonce(step.gathered("image", self.image_view), captions, valid, scale, extras.get("sample_weight"))
        return {"loss": loss, "logit_scale": scale.detach()}
