"""Pure losses of masked image modelling: pixel (MAE) and joint-space feature (CFM-ViT) reconstruction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patchify(images: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, N, ph*pw*C), patches in row-major grid order (as a ViT's patch embedding)."""
    batch, channels, height, width = images.shape
    ph, pw = patch_size
    grid = images.reshape(batch, channels, height // ph, ph, width // pw, pw)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // ph) * (width // pw), ph * pw * channels)


def unpatchify(patches: Tensor, patch_size: tuple[int, int], grid: tuple[int, int], channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`."""
    batch = patches.shape[0]
    (ph, pw), (gh, gw) = patch_size, grid
    images = patches.reshape(batch, gh, gw, ph, pw, channels).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(batch, channels, gh * ph, gw * pw)


def masked_positions(kept: Tensor, num_patches: int) -> Tensor:
    """(B, N) True where a patch was dropped (not in ``kept``)."""
    masked = torch.ones(kept.shape[0], num_patches, dtype=torch.bool, device=kept.device)
    return masked.scatter(1, kept, False)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's normalised-pixel targets: each patch minus its mean, over sqrt(its variance + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(predicted: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """MAE (He et al., 2022): mean over masked patches of the per-patch mean squared error.

    ``predicted``/``target`` (B, N, P) pixel patches, ``masked`` (B, N) the dropped patches.
    """
    per_patch = (predicted - target).pow(2).mean(dim=-1)
    weights = masked.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()


def feature_reconstruction_loss(predicted: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """CFM-ViT (Kim et al., 2023): mean over masked tokens of 1 - cos(prediction, target).

    Targets are the unmasked image's tokens projected into the joint image-text space,
    carrying no gradient (the caller detaches them).
    """
    per_token = 1.0 - F.cosine_similarity(predicted, target, dim=-1)
    weights = masked.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum()
