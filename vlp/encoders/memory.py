"""Per-tower activation checkpointing and ``torch.compile``, switched on from the YAML.

``grad_checkpointing`` recomputes each block's activations in the backward pass instead
of storing them (timm's ``set_grad_checkpointing``, transformers'
``activation_checkpointing_enable``): less activation memory for about one more forward.
``compile`` compiles the backbone in place (``nn.Module.compile``), so parameter names,
checkpoints and FSDP sharding are unchanged. Neither changes the computed values.
"""

from __future__ import annotations

from torch import nn

from vlp.registry import ConfigError


def configure_backbone(backbone: nn.Module, grad_checkpointing: bool, compile: bool, where: str) -> None:
    if grad_checkpointing:
        if hasattr(backbone, "set_grad_checkpointing"):  # timm
            backbone.set_grad_checkpointing(True)
        elif getattr(backbone, "supports_gradient_checkpointing", False):  # transformers
            enable = getattr(backbone, "activation_checkpointing_enable", None)  # transformers >= 5.x name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ConfigError(f"The {where} backbone {type(backbone).__name__} has no activation checkpointing; set grad_checkpointing: false.")
    if compile:
        backbone.compile()
