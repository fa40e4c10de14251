"""How each tower trains: fully, locked (LiT), locked but its last N blocks, or with LoRA/DoRA.

Adapters come from peft (``inject_adapter_in_model``), so any peft-supported layer
works; vlp only picks sensible default target modules per encoder family and marks
what is trainable. Merging for export replaces each adapted layer by its merged base
layer, leaving a plain timm/transformers model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import peft
from peft.tuners.tuners_utils import BaseTunerLayer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vlp.config.schema import build_dataclass
from vlp.registry import ConfigError

TIMM_VIT_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
CLIP_FAMILY_TARGETS = r".*layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
BERT_FAMILY_TARGETS = r".*layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
BLOCK_LISTS = ("blocks", "stages", "encoder.layers", "encoder.layer", "text_model.encoder.layers", "vision_model.encoder.layers", "layers")


@dataclass
class LoraSettings:
    """peft LoRA arguments; ``dora`` switches to weight-decomposed LoRA (Liu et al., 2024)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    dora: bool = False
    target_modules: list[str] | str | None = None


@dataclass
class TowerTuning:
    """The YAML ``model.tuning.image`` / ``model.tuning.text`` section."""

    mode: Literal["full", "locked", "lora"] = "full"
    unlocked_blocks: int = 0
    train_projection: bool = True
    lora: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tuning:
    """The YAML ``model.tuning`` section; ``train_objectives`` covers temperatures and heads."""

    image: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    train_objectives: bool = True


def parse_tuning(values: dict[str, Any], where: Callable[[str], str]) -> tuple[TowerTuning, TowerTuning, bool]:
    tuning = build_dataclass(Tuning, values, "model.tuning", where)
    towers = []
    for name in ("image", "text"):
        tower = build_dataclass(TowerTuning, getattr(tuning, name), f"model.tuning.{name}", where)
        build_dataclass(LoraSettings, tower.lora, f"model.tuning.{name}.lora", where)
        towers.append(tower)
    return towers[0], towers[1], tuning.train_objectives


def default_lora_targets(backbone: nn.Module) -> str:
    """Attention and MLP linears of each block; never patch or token embeddings."""
    if isinstance(backbone, VisionTransformer):
        return TIMM_VIT_TARGETS
    model_type = getattr(getattr(backbone, "config", None), "model_type", "")
    if model_type.startswith(("clip", "siglip")):
        return CLIP_FAMILY_TARGETS
    if model_type in ("bert", "roberta", "xlm-roberta", "camembert", "electra"):
        return BERT_FAMILY_TARGETS
    raise ConfigError(
        f"vlp has no default LoRA target modules for {type(backbone).__name__}; set "
        f"model.tuning.<tower>.lora.target_modules to the names (or a regex) of its linear layers."
    )


def block_list(backbone: nn.Module) -> nn.ModuleList:
    for path in BLOCK_LISTS:
        module: Any = backbone
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            return module
    raise ConfigError(f"Cannot find the blocks of {type(backbone).__name__} to unlock; use unlocked_blocks: 0 or mode: lora.")


def lock(backbone: nn.Module, unlocked_blocks: int) -> None:
    """Freeze the backbone except its last ``unlocked_blocks`` blocks and what follows them (final norm)."""
    backbone.requires_grad_(False)
    if unlocked_blocks <= 0:
        return
    blocks = block_list(backbone)
    if unlocked_blocks > len(blocks):
        raise ConfigError(f"unlocked_blocks is {unlocked_blocks} but the tower has {len(blocks)} blocks; lower it.")
    first = {id(p) for p in blocks[len(blocks) - unlocked_blocks].parameters()}
    trainable = False
    for parameter in backbone.parameters():
        trainable = trainable or id(parameter) in first
        parameter.requires_grad_(trainable)


def add_lora(backbone: nn.Module, settings: LoraSettings) -> None:
    targets = settings.target_modules or default_lora_targets(backbone)
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, use_dora=settings.dora, target_modules=targets
    )
    backbone.requires_grad_(False)
    try:
        peft.inject_adapter_in_model(config, backbone)
    except ValueError as error:
        raise ConfigError(f"LoRA target modules {targets!r} match no layer of {type(backbone).__name__} ({error}); fix lora.target_modules.") from error
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_("lora_" in name)


def apply_tuning(tower: nn.Module, tuning: TowerTuning) -> None:
    """Set what trains in one tower (its ``backbone`` and ``projection``)."""
    if tuning.mode == "locked":
        lock(tower.backbone, tuning.unlocked_blocks)
    elif tuning.mode == "lora":
        add_lora(tower.backbone, LoraSettings(**tuning.lora))
    tower.projection.requires_grad_(tuning.train_projection and not tower.projection_is_fixed)


def merge_adapters(module: nn.Module) -> None:
    """Fold every adapter into its base layer and put the plain base layer back in place."""
    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            child.merge()
            parent_name, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attribute, child.get_base_layer())


def has_adapters(module: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())
