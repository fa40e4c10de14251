"""The inverse of :mod:`vlp.encoders.open_clip_convert`: trained timm / transformers tower weights back to open_clip's layout.

An export of open_clip towers writes its merged weights in the layout the towers are
built from, so the export rebuilds without the original checkpoint.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from vlp.encoders.open_clip_convert import HF_BLOCK_NAMES, HF_TOP_NAMES, TIMM_BLOCK_NAMES, TIMM_TOP_NAMES

TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
QKV = ("q_proj", "k_proj", "v_proj")


def _inverse(names: dict[str, str]) -> dict[str, str]:
    return {target: source for source, target in names.items()}


def from_timm_vit(backbone: dict[str, Tensor], projection_weight: Tensor) -> dict[str, Tensor]:
    """open_clip ``visual.*`` keys (without the prefix) from a timm ViT state dict and the (embed_dim, width) projection."""
    blocks, top = _inverse(TIMM_BLOCK_NAMES), _inverse(TIMM_TOP_NAMES)
    state: dict[str, Tensor] = {"proj": projection_weight.t()}
    for key, value in backbone.items():
        if key == "cls_token":
            state["class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            state["positional_embedding"] = value.squeeze(0)
        elif match := TIMM_BLOCK.fullmatch(key):
            state[f"transformer.resblocks.{match.group(1)}.{blocks.get(match.group(2), match.group(2))}"] = value
        else:
            state[top.get(key, key)] = value
    return state


def from_hf_clip_text(backbone: dict[str, Tensor], projection_weight: Tensor) -> dict[str, Tensor]:
    """open_clip text keys from a transformers ``CLIPTextModel`` state dict (q/k/v fused back) and the projection."""
    blocks, top = _inverse(HF_BLOCK_NAMES), _inverse(HF_TOP_NAMES)
    backbone = {k.removeprefix("text_model."): v for k, v in backbone.items() if not k.endswith("position_ids")}
    state: dict[str, Tensor] = {"text_projection": projection_weight.t()}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in backbone.items():
        match = HF_LAYER.fullmatch(key)
        if match is None:
            state[top.get(key, key)] = value
            continue
        layer, name = match.group(1), match.group(2)
        part, _, kind = name.removeprefix("self_attn.").partition(".")
        if name.startswith("self_attn.") and part in QKV:
            fused.setdefault((layer, kind), {})[part] = value
        else:
            state[f"transformer.resblocks.{layer}.{blocks.get(name, name)}"] = value
    for (layer, kind), parts in fused.items():
        state[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in QKV], dim=0)
    return state
