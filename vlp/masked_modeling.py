"""Pure functions for masked modelling: token, pixel (MAE) and feature (CFM-ViT) losses, patches, text-guided patch choice.

Losses are means over every masked token (or patch) of the global batch: each rank returns
W/N_global times its local sum, so the rank mean (what DDP's gradient averaging and logging
take) equals the single-process loss even when ranks hold different numbers of masked items.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vlp.distributed import rank_and_world_size
from vlp.text.masking import IGNORE_INDEX


def global_mean(local_sum: Tensor, local_count: Tensor) -> Tensor:
    """This rank's share of Σ_all ranks sum / Σ_all ranks count; 0 (with a graph) if nothing is counted."""
    _, world_size = rank_and_world_size()
    count = local_count.detach().to(local_sum.dtype)
    if world_size > 1:
        count = count.clone()
        dist.all_reduce(count)
    return local_sum * world_size / count.clamp(min=1)


def masked_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over tokens whose label is not ``IGNORE_INDEX``, averaged over the global batch.

    ``logits`` (..., V) and ``labels`` (...) may already be restricted to the chosen tokens.
    """
    scored = labels != IGNORE_INDEX
    losses = F.cross_entropy(logits[scored], labels[scored], reduction="sum")
    return global_mean(losses, scored.sum())


def patchify(images: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, N, ph*pw*C): patches in row-major grid order (timm's token order),
    each flattened as (row, column, channel) like MAE's ``patchify``."""
    height_p, width_p = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    batch, channels, height, width = images.shape
    if height % height_p or width % width_p:
        raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {height_p}x{width_p}.")
    rows, columns = height // height_p, width // width_p
    patches = images.reshape(batch, channels, rows, height_p, columns, width_p)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * columns, height_p * width_p * channels)


def unpatchify(patches: Tensor, patch_size: tuple[int, int], grid: tuple[int, int], channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`."""
    (height_p, width_p), (rows, columns) = patch_size, grid
    images = patches.reshape(patches.shape[0], rows, columns, height_p, width_p, channels).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(patches.shape[0], channels, rows * height_p, columns * width_p)


def masked_positions(kept: Tensor, num_patches: int) -> Tensor:
    """(B, N) True where a patch was dropped (its index is not in ``kept``)."""
    masked = torch.ones(kept.shape[0], num_patches, dtype=torch.bool, device=kept.device)
    return masked.scatter(1, kept, False)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's ``norm_pix_loss`` targets: each patch minus its mean, over sqrt(its unbiased variance + eps)."""
    return (patches - patches.mean(dim=-1, keepdim=True)) / (patches.var(dim=-1, keepdim=True) + eps).sqrt()


def masked_patch_loss(prediction: Tensor, target: Tensor, masked: Tensor, normalize_target: bool = False) -> Tensor:
    """MAE's loss: mean squared error per patch, averaged over the masked patches of the global batch.

    ``prediction`` and ``target`` are (B, N, P) patches, ``masked`` (B, N) is True where a patch
    was hidden from the encoder. ``normalize_target`` standardises each target patch by its
    own mean and variance (MAE's ``norm_pix_loss``, unbiased variance, eps 1e-6).
    """
    if normalize_target:
        target = normalize_patches(target)
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    return global_mean((per_patch * masked.to(per_patch.dtype)).sum(), masked.sum())


def feature_reconstruction_loss(predicted: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """CFM-ViT (Kim et al., 2023): 1 - cos(prediction, target), averaged over the masked tokens of the global batch.

    Targets are the unmasked image's tokens projected into the joint image-text space,
    carrying no gradient (the caller detaches them).
    """
    per_token = 1.0 - F.cosine_similarity(predicted, target, dim=-1)
    return global_mean((per_token * masked.to(per_token.dtype)).sum(), masked.sum())


def text_guided_keep_indices(text_embedding: Tensor, patch_embeddings: Tensor, keep: int) -> Tensor:
    """Indices (B, keep), ascending, of the patches the text attends to most (SyCoCa's attentive masking).

    The text's pooled embedding (B, D) is the query and the patch embeddings (B, N, D) the
    keys; the attention over patches is softmax(q·k / sqrt(D)), whose order is that of q·k,
    so the ``keep`` largest dot products are kept. No gradient flows through the choice.
    """
    if not 0 < keep <= patch_embeddings.shape[1]:
        raise ValueError(f"keep must lie in [1, {patch_embeddings.shape[1]}], got {keep}.")
    with torch.no_grad():
        scores = torch.einsum("bd,bnd->bn", text_embedding, patch_embeddings)
        return scores.topk(keep, dim=1).indices.sort(dim=1).values
