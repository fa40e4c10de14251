"""CLIP / ALIGN: symmetric InfoNCE over the global batch (Radford et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlp.encoders.pretrained_scales import read_scales
from vlp.functional import infonce_loss
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("clip")
class CLIPContrastive(Objective):
    """Symmetric InfoNCE with a learnable temperature.

    The logit scale is stored as a log and initialised at ``1/init_temperature``
    (CLIP: 1/0.07); it is clamped to at most ``max_logit_scale`` (CLIP: 100).
    ``init_from`` reads it instead from a pretrained CLIPModel directory or open_clip file.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        log_scale = read_scales(init_from).log_logit_scale if init_from else math.log(1.0 / init_temperature)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(log_scale)), requires_grad=learn_temperature)
        self.max_log_logit_scale = math.log(max_logit_scale)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale
        loss = infonce_loss(step.image().embedding, step.text().embedding, scale)
        return {"loss": loss, "logit_scale": scale.detach()}
