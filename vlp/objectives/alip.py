"""ALIP: contrastive losses on raw text and synthetic caption, weighted by consistency gates (Yang et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.functional import consistency_gates, infonce_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.objectives.multi_positive import all_captions
from vlp.registry import OBJECTIVES
from vlp.step import Step, TextView


@OBJECTIVES.register("alip")
class ALIP(Objective):
    """ALIP's adaptive contrastive loss: W_s W_t L(image, raw) + W_s W_c L(image, synthetic).

    Needs ``data.all_captions: true`` with caption 0 the raw text and caption 1 the
    synthetic caption of each image. The gates (see ``consistency_gates``) carry no
    gradient; their running similarity means start at 1 and update in training only.
    ALIP's values: momentum 0.99, gamma 2. Optional ``sample_weight`` multiplies the gates.
    """

    def __init__(
        self, momentum: float = 0.99, gamma: float = 2.0, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
        image_view: str = "full", text_view: str = "all_captions",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.momentum = momentum
        self.gamma = gamma
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)
        self.register_buffer("running_similarity", torch.ones(3))

    def text_views(self) -> dict[str, TextView]:
        return {"all_captions": all_captions}

    def forward(self, step: Step) -> dict[str, Tensor]:
        extras = step.batch.extras
        valid = extras.get("captions_valid")
        if valid is None or valid.shape[1] < 2 or not bool(valid[:, :2].all()):
            raise KeyError(
                "alip needs a raw text (caption 0) and a synthetic caption (caption 1) per image: "
                "set `data.all_captions: true` on data with two captions per image."
            )
        captions = step.text(self.text_view).embedding.view(*valid.shape, -1)
        raw, synthetic = captions[:, 0], captions[:, 1]
        image = step.image(self.image_view).embedding
        sample_gate, raw_gate, synthetic_gate, running = consistency_gates(
            image, raw, synthetic, self.running_similarity, self.momentum, self.gamma
        )
        if self.training:
            self.running_similarity.copy_(running)
        weight = extras.get("sample_weight")
        if weight is not None:
            sample_gate = sample_gate * weight.to(sample_gate.dtype)
        scale = self.logit_scale()
        raw_loss = infonce_loss(image, raw, scale, sample_gate * raw_gate)
        synthetic_loss = infonce_loss(image, synthetic, scale, sample_gate * synthetic_gate)
        return {
            "loss": raw_loss + synthetic_loss, "raw_loss": raw_loss.detach(), "synthetic_loss": synthetic_loss.detach(),
            "logit_scale": scale.detach(), "sample_gate": sample_gate.mean(),
        }
