"""Masked token, patch and feature losses over 2 CPU processes equal the global batch on one.

Kept apart from test_masked_modeling.py so the spawned processes import only torch and
vlp.masked_modeling, not the heads (timm).
"""

from __future__ import annotations

import torch

from objective_testing import assert_ddp_matches_single_process
from vlp.masked_modeling import feature_reconstruction_loss, masked_patch_loss, masked_token_loss
from vlp.text.masking import IGNORE_INDEX


def token_and_patch_losses(logits, labels, prediction, target, masked):
    """MLM + MAE (normalised pixels) + CFM-ViT's feature loss: each a mean over the global batch."""
    return (masked_token_loss(logits, labels) + masked_patch_loss(prediction, target, masked, normalize_target=True)
            + feature_reconstruction_loss(prediction, target, masked))


def test_token_and_patch_losses_over_two_ranks_equal_the_global_batch(tmp_path):
    """Ranks hold different numbers of masked tokens and patches; both means stay global (float64)."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(7, (4, 6), generator=generator)
    labels[2:] = IGNORE_INDEX
    labels[2, 1], labels[3, 4] = 3, 5  # rank 0 scores 12 tokens, rank 1 two
    masked = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]).bool()
    inputs = {
        "logits": logits, "labels": labels, "masked": masked,
        "prediction": torch.randn(4, 5, 6, generator=generator, dtype=torch.float64),
        "target": torch.rand(4, 5, 6, generator=generator, dtype=torch.float64),
    }
    assert_ddp_matches_single_process(token_and_patch_losses, inputs, {}, tmp_path)
