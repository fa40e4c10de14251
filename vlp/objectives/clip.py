"""CLIP / ALIGN: symmetric InfoNCE over the global batch (Radford et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlp.functional import infonce_loss
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("clip")
class CLIPContrastive(Objective):
    """Symmetric InfoNCE with a learnable temperature.

    The logit scale is stored as a log and initialised at ``1/init_temperature``
    (CLIP: 1/0.07); it is clamped to at most ``max_logit_scale`` (CLIP: 100).
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0, learn_temperature: bool = True) -> None:
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learn_temperature)
        self.max_log_logit_scale = math.log(max_logit_scale)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale
        loss = infonce_loss(step.image().embedding, step.text().embedding, scale)
        return {"loss": loss, "logit_scale": scale.detach()}
