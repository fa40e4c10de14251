"""Key mapping from open_clip's CLIP state dict to timm's CLIP ViT and transformers' CLIPTextModel.

open_clip's ViT (``visual.*``) and text transformer (top-level keys) share one residual
block layout: ``ln_1``, ``attn`` (``nn.MultiheadAttention`` with a fused ``in_proj``),
``ln_2``, ``mlp.c_fc``/``mlp.c_proj``. Architecture sizes are read from tensor shapes;
the head count and activation are not stored, so callers pass them. Keys this mapping
does not know (layer scale, attentional pooling, ...) are passed through unchanged so
that strict loading lists them as unexpected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from vlp.registry import ConfigError

VISUAL = "visual."
WRAPPER_PREFIX = "module."
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")

TIMM_BLOCK_NAMES = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}  # fmt: skip
TIMM_TOP_NAMES = {
    "conv1.weight": "patch_embed.proj.weight",
    "ln_pre.weight": "norm_pre.weight", "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias",
}  # fmt: skip
HF_BLOCK_NAMES = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}  # fmt: skip
HF_TOP_NAMES = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias",
}  # fmt: skip


@dataclass(frozen=True)
class TransformerShape:
    """Sizes read from the weights: depth, MLP hidden size and sequence positions."""

    depth: int
    mlp_hidden: int
    positions: int


def unwrap(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that DDP-trained open_clip checkpoints carry."""
    return {key.removeprefix(WRAPPER_PREFIX): value for key, value in state.items()}


def vision_part(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    part = {key.removeprefix(VISUAL): value for key, value in state.items() if key.startswith(VISUAL)}
    if "conv1.weight" not in part or "proj" not in part:
        raise ConfigError(
            f"{source} holds no open_clip ViT image tower (visual.conv1.weight and visual.proj); "
            f"only open_clip's own ViT layout converts, use the timm tower for timm-based checkpoints."
        )
    return part


def text_part(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    part = {key: value for key, value in state.items() if key.startswith(TEXT_KEYS)}
    if "token_embedding.weight" not in part or "text_projection" not in part:
        raise ConfigError(
            f"{source} holds no open_clip text transformer (token_embedding.weight and text_projection); "
            f"checkpoints with a transformers text tower load through the transformers text encoder."
        )
    return part


def shape_of(part: dict[str, Tensor]) -> TransformerShape:
    blocks = {int(match.group(1)) for key in part if (match := BLOCK.fullmatch(key))}
    return TransformerShape(
        depth=len(blocks),
        mlp_hidden=part["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        positions=part["positional_embedding"].shape[0],
    )


def to_timm_vit(vision: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """timm ``VisionTransformer`` (pre_norm, class token) weights, and the projection as (embed_dim, width)."""
    converted: dict[str, Tensor] = {}
    for key, value in vision.items():
        if key == "proj":
            continue
        if key == "class_embedding":
            converted["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            converted["pos_embed"] = value.unsqueeze(0)
        elif match := BLOCK.fullmatch(key):
            converted[f"blocks.{match.group(1)}.{TIMM_BLOCK_NAMES.get(match.group(2), match.group(2))}"] = value
        else:
            converted[TIMM_TOP_NAMES.get(key, key)] = value
    return converted, vision["proj"].t().contiguous()


def to_hf_clip_text(text: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """transformers ``CLIPTextModel`` weights (fused in_proj split into q/k/v), and the projection as (embed_dim, width)."""
    converted: dict[str, Tensor] = {}
    for key, value in text.items():
        if key == "text_projection":
            continue
        match = BLOCK.fullmatch(key)
        if match is None:
            converted[HF_TOP_NAMES.get(key, key)] = value
            continue
        layer, name = f"encoder.layers.{match.group(1)}", match.group(2)
        if name.startswith("attn.in_proj_"):
            kind = name.removeprefix("attn.in_proj_")
            for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{layer}.self_attn.{projection}.{kind}"] = chunk.contiguous()
        else:
            converted[f"{layer}.{HF_BLOCK_NAMES.get(name, name)}"] = value
    return converted, text["text_projection"].t().contiguous()

