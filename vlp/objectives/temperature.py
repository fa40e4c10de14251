"""The learnable logit scale (inverse temperature) that contrastive objectives own."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LogitScale(nn.Module):
    """CLIP's logit scale: stored as a log, initialised at 1/temperature, clamped at a maximum.

    Each objective owns one (objectives never share parameters); calling it returns the scale.
    """

    def __init__(
        self, init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True, init_log_value: float | None = None
    ) -> None:
        super().__init__()
        value = math.log(1.0 / init_temperature) if init_log_value is None else init_log_value
        self.log_value = nn.Parameter(torch.tensor(float(value)), requires_grad=learnable)
        self.max_log_value = math.log(max_scale)

    def forward(self) -> Tensor:
        return self.log_value.clamp(max=self.max_log_value).exp()
