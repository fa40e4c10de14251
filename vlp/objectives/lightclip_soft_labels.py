"""LightCLIP's progressively softened labels for instance-level alignment (Nie et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.functional import soft_label_infonce
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("lightclip_soft_labels")
class LightCLIPSoftLabels(Objective):
    """Symmetric InfoNCE whose negatives share a target mass that grows over training.

    The mass given to negatives rises linearly with ``step.progress`` from 0 (plain
    InfoNCE) to ``max_negative_mass`` at the end of training, spread evenly over the
    N - 1 negatives of the global batch. Optional ``sample_weight`` scales each pair.
    """

    def __init__(
        self, max_negative_mass: float = 0.1, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
        image_view: str = "full", text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        if not 0.0 <= max_negative_mass < 1.0:
            raise ValueError(f"max_negative_mass must be in [0, 1), got {max_negative_mass}.")
        self.max_negative_mass = max_negative_mass
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def negative_mass(self, progress: float) -> float:
        return self.max_negative_mass * min(max(progress, 0.0), 1.0)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        mass = self.negative_mass(step.progress)
        loss = soft_label_infonce(
            step.gathered("image", self.image_view), step.gathered("text", self.text_view), scale, mass, step.batch.extras.get("sample_weight")
        )
        return {"loss": loss, "logit_scale": scale.detach(), "negative_mass": torch.tensor(mass)}
