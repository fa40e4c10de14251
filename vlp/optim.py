"""AdamW with the usual no-decay groups, and a linear-warmup cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.registry import ConfigError

NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "reg_token", "embeddings", "logit_scale", "logit_bias", "temperature")


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
    """Split trainable parameters: no decay on biases, norms, embeddings and temperatures.

    One-dimensional tensors are biases, norm scales or scalars (temperatures); embedding
    tables and position/class tokens are recognised by module type or name.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or id(param) in embedding_params or any(part in name for part in NO_DECAY_NAME_PARTS)
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, schedule: str = "cosine") -> float:
    """Learning-rate multiplier: linear from 1/warmup to 1, then cosine down to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
