"""DINO's projection head: an MLP to a bottleneck, L2-normalised, then a weight-normalised prototype layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """``depth`` linear layers with GELU (the last to ``bottleneck``), then ``out_dim`` prototype logits.

    The prototype layer's direction is learned with its norm fixed at 1 (DINO's
    ``norm_last_layer``), which keeps the teacher's sharpened targets stable.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, depth: int = 3) -> None:
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (depth - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(width_in, width_out))
            if index < depth - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(F.normalize(self.mlp(features), dim=-1), F.normalize(self.prototypes, dim=-1))
