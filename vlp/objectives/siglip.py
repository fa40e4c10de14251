"""SigLIP: pairwise sigmoid loss (Zhai et al., 2023; Tschannen et al., 2025, SigLIP 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlp.encoders.pretrained_scales import read_scales
from vlp.functional import sigmoid_loss
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES
from vlp.step import Step
from vlp.tiled import check_tile_size, tiled_sigmoid_loss


@OBJECTIVES.register("siglip")
class SigLIP(Objective):
    """Sigmoid loss with learnable temperature t = exp(t') and bias b.

    The paper initialises t' = log 10 and b = -10 so the many negatives start with a
    small loss. Optional ``sample_weight`` in the batch extras scales each image's row.
    ``tile_size`` computes the same loss tile by tile with a recomputing backward (``vlp.tiled``).
    """

    def __init__(
        self, init_log_scale: float = math.log(10.0), init_bias: float = -10.0, init_from: str | None = None,
        tile_size: int | None = None, image_view: str = "full", text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.tile_size = check_tile_size(tile_size)
        if init_from is not None:  # a pretrained SiglipModel directory or open_clip file
            scales = read_scales(init_from, need_bias=True)
            init_log_scale, init_bias = scales.log_logit_scale, scales.logit_bias
        self.log_logit_scale = nn.Parameter(torch.tensor(float(init_log_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.log_logit_scale.exp()
        weight = step.batch.extras.get("sample_weight")
        if self.tile_size:  # tiles gather the raw embeddings themselves
            images, texts = step.image(self.image_view).embedding, step.text(self.text_view).embedding
            loss = tiled_sigmoid_loss(images, texts, scale, self.logit_bias, self.tile_size, weight)
        else:
            loss = sigmoid_loss(step.gathered("image", self.image_view), step.gathered("text", self.text_view), scale,
                                self.logit_bias, weight)
        return {"loss": loss, "logit_scale": scale.detach(), "logit_bias": self.logit_bias.detach()}
