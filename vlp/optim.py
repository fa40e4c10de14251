"""AdamW with the usual no-decay groups, a linear-warmup cosine schedule, and the logit-scale bound."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.objectives.temperature import LogitScale
from vlp.registry import ConfigError

# Layers whose ``weight`` is a matrix that multiplies inputs: the only parameters that decay.
# transformers' GPT-style ``Conv1D`` is a linear layer too.
try:
    from transformers.pytorch_utils import Conv1D as _HFConv1D

    WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, _HFConv1D)
except ImportError:  # pragma: no cover - transformers is a dependency
    WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class OptimConfig:
    """The YAML ``optim`` section."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    momentum: float = 0.9
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    # > 1: each batch's gradient is computed in this many micro-batches, exactly (vlp.grad_cache).
    grad_cache_micro_batches: int = 1

    def __post_init__(self) -> None:
        if self.grad_cache_micro_batches < 1:
            raise ConfigError(
                f"optim.grad_cache_micro_batches must be 1 (off) or more micro-batches per batch, got {self.grad_cache_micro_batches}."
            )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters: only the weight matrices of linear and convolution layers decay.

    Decided by what a parameter is, never by its name, so every tower family (timm,
    transformers, open_clip converted to either) is treated alike: biases, norm scales
    and scalars (temperatures, logit biases) are 1-D; token and position tables are
    ``nn.Embedding`` weights or bare tensors (``pos_embed``, ``cls_token``,
    ``class_embedding``) that no linear or convolution layer owns. Patch embeddings are
    convolutions and decay in every family, as in open_clip.
    """
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and getattr(m, "weight", None) is not None}
    for attention in (m for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        decayed.update(id(p) for name, p in attention.named_parameters(recurse=False) if name.endswith("proj_weight"))
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if id(param) in decayed and param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer; after each of its steps every logit scale is bounded in place."""
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    scales = [m for m in model.modules() if isinstance(m, LogitScale)]
    if scales:
        optimizer.register_step_post_hook(lambda *_: [scale.clamp_() for scale in scales])
    return optimizer


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, schedule: str = "cosine") -> float:
    """Learning-rate multiplier: linear from 1/warmup to 1, then cosine down to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
