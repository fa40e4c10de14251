"""Token-level entry into ViT image towers: a subset of patches, positions dropped per sample, intermediates.

FLIP, MAE and CFM-ViT run the image tower on some patches only. These functions rebuild
the tower's forward from the library's own pieces (timm: ``patch_embed``, ``_pos_embed``,
``norm_pre``, ``blocks``, ``norm``, ``forward_head``; transformers: ``embeddings``,
``encoder.layers``, ``post_layernorm``, the pooling head), adding only the gather of
the kept patches and the removal of positional embeddings, so any ViT of those libraries works.
With every patch kept, in order, and no positions dropped, they equal the tower's forward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vlp.registry import ConfigError


def random_keep_indices(batch: int, num_patches: int, keep: int, device: torch.device | None = None) -> Tensor:
    """(batch, keep) indices of a uniformly random subset of patches per sample, in grid order."""
    if not 0 < keep <= num_patches:
        raise ConfigError(f"Cannot keep {keep} of {num_patches} patches; choose a mask ratio that keeps at least one patch.")
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    return order[:, :keep].sort(dim=1).values


def gather_patches(patches: Tensor, keep: Tensor) -> Tensor:
    """Rows ``keep`` (B, K) of patch tokens (B, N, D)."""
    return patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def _remove_positions(patches: Tensor, positions: Tensor, drop: Tensor | None) -> Tensor:
    """Subtract the patch positional embeddings (1, N, D) from samples where ``drop`` is True."""
    if drop is None:
        return patches
    return patches - drop.to(patches.dtype).view(-1, 1, 1) * positions


def _layer_indices(layers: Sequence[int], depth: int) -> set[int]:
    indices = {layer % depth for layer in layers}
    if any(not -depth <= layer < depth for layer in layers):
        raise ConfigError(f"Intermediate layers {list(layers)} do not exist in a tower of {depth} blocks; use indices in [-{depth}, {depth}).")
    return indices


def timm_vit_patches(
    vit: nn.Module, pixels: Tensor, keep: Tensor | None, drop_positions: Tensor | None, layers: Sequence[int]
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """(pooled, patch tokens, intermediates) of a timm ``VisionTransformer`` on the kept patches."""
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(
            f"timm model {type(vit).__name__} is not a VisionTransformer; patch dropping needs a timm ViT (e.g. vit_tiny_patch16_224)."
        )
    # dynamic_img_size resamples the positions to another input size; at the native size they are the stored ones.
    grid = tuple(side // patch for side, patch in zip(pixels.shape[-2:], vit.patch_embed.patch_size))
    resampled = vit.dynamic_img_size and grid != tuple(vit.patch_embed.grid_size)
    if drop_positions is not None and (resampled or getattr(vit.pos_drop, "p", 0.0) > 0 or vit.pos_embed is None):
        raise ConfigError("Dropping positional embeddings needs a ViT with learned positions, pos_drop_rate 0 and images at its img_size.")
    prefix = vit.num_prefix_tokens
    x = vit._pos_embed(vit.patch_embed(pixels))
    cls, patches = x[:, :prefix], x[:, prefix:]
    if drop_positions is not None:
        patches = _remove_positions(patches, vit.pos_embed[:, -patches.shape[1] :], drop_positions)
    if keep is not None:
        patches = gather_patches(patches, keep)
    x = vit.norm_pre(torch.cat([cls, patches], dim=1))
    wanted, intermediates = _layer_indices(layers, len(vit.blocks)), []
    for index, block in enumerate(vit.blocks):
        x = block(x)
        if index in wanted:
            intermediates.append(x[:, prefix:])
    x = vit.norm(x)
    return vit.forward_head(x, pre_logits=True), x[:, prefix:], tuple(intermediates)


def hf_vit_patches(
    vision: nn.Module, pixels: Tensor, keep: Tensor | None, drop_positions: Tensor | None, layers: Sequence[int],
    class_token: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """(last hidden state incl. class token, its patch part, intermediates) of a transformers CLIP/SigLIP vision model.

    CLIP: class token, ``pre_layrnorm`` before the encoder; SigLIP: no class token. The
    caller pools (CLIP: ``post_layernorm`` of the class token; SigLIP: its attention head).
    """
    embeddings = vision.embeddings
    patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
    positions = embeddings.position_embedding(embeddings.position_ids)
    prefix = 1 if class_token else 0
    patches = patches + positions[:, prefix:]
    patches = _remove_positions(patches, positions[:, prefix:], drop_positions)
    if keep is not None:
        patches = gather_patches(patches, keep)
    if class_token:
        cls = (embeddings.class_embedding + positions[:, 0]).expand(patches.shape[0], 1, -1)
        x = vision.pre_layrnorm(torch.cat([cls, patches], dim=1))
    else:
        x = patches
    wanted, intermediates = _layer_indices(layers, len(vision.encoder.layers)), []
    for index, layer in enumerate(vision.encoder.layers):
        x = layer(x, None)
        if index in wanted:
            intermediates.append(x[:, prefix:])
    return x, x[:, prefix:], tuple(intermediates)
