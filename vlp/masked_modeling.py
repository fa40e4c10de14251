"""Pure functions for masked modelling: token and patch losses, patches, text-guided patch choice.

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


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): patches in row-major grid order (timm's token order),
    each flattened as (row, column, channel) like MAE's ``patchify``."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {patch_size}.")
    rows, columns = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * columns, patch_size * patch_size * channels)


def masked_patch_loss(prediction: Tensor, target: Tensor, masked: Tensor, normalize_target: bool = False) -> Tensor:
    """MAE's loss: mean squared error per patch, averaged over the masked patches of the global batch.

    ``prediction`` and ``target`` are (B, N, P) patches, ``masked`` (B, N) is True where a patch
    was hidden from the encoder. ``normalize_target`` standardises each target patch by its
    own mean and variance (MAE's ``norm_pix_loss``, unbiased variance, eps 1e-6).
    """
    if normalize_target:
        mean = target.mean(dim=-1, keepdim=True)
        variance = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (variance + 1e-6).sqrt()
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    return global_mean((per_patch * masked.to(per_patch.dtype)).sum(), masked.sum())


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
