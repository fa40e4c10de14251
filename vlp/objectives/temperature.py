"""The learnable logit scale (inverse temperature) that contrastive objectives own."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LogitScale(nn.Module):
    """CLIP's logit scale: stored as a log, initialised at 1/temperature, bounded at a maximum.

    The bound is applied to the parameter itself after each optimizer step (``clamp_``,
    called by the optimizer built in :mod:`vlp.optim`), never inside ``forward``: a clamp
    in the forward pass has zero gradient above the bound, so a scale that reached it
    (or started there, as OpenAI/open_clip checkpoints do) could never move back down.
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
        return self.log_value.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Bound the stored log-scale in place (open_clip does this after every optimizer step)."""
        self.log_value.clamp_(max=self.max_log_value)
