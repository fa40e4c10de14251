"""CLIP's symmetric InfoNCE: exact values against a direct loop over the paper's formula."""

from __future__ import annotations

import math

import torch

from vlp.functional import infonce_loss
from vlp.objectives.clip import CLIPContrastive


def reference_infonce(images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Radford et al. 2021, Fig. 3, written as explicit sums over the batch."""
    n = images.shape[0]
    images = images / images.norm(dim=1, keepdim=True)
    texts = texts / texts.norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=images.dtype)
    for i in range(n):
        row = torch.stack([scale * images[i] @ texts[j] for j in range(n)])
        column = torch.stack([scale * texts[i] @ images[j] for j in range(n)])
        total = total - (row[i] - torch.logsumexp(row, 0)) - (column[i] - torch.logsumexp(column, 0))
    return total / (2 * n)


def test_infonce_value_and_gradients_match_reference():
    torch.manual_seed(0)
    images = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(7.5, dtype=torch.float64, requires_grad=True)
    loss = infonce_loss(images, texts, scale)
    expected = reference_infonce(images, texts, scale)
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, (images, texts, scale))
    expected_grads = torch.autograd.grad(expected, (images, texts, scale))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_infonce_of_perfect_alignment_approaches_zero_and_of_constant_features_is_log_n():
    eye = torch.eye(4)
    assert infonce_loss(eye, eye, torch.tensor(100.0)).item() < 1e-10
    same = torch.ones(4, 3)
    torch.testing.assert_close(infonce_loss(same, same, torch.tensor(10.0)), torch.tensor(math.log(4)))


def test_clip_temperature_initialised_at_one_over_007_and_clamped_at_100_after_a_step():
    objective = CLIPContrastive()
    torch.testing.assert_close(objective.logit_scale(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        objective.logit_scale.log_value.fill_(math.log(500.0))
    torch.testing.assert_close(objective.logit_scale(), torch.tensor(500.0))  # no clamp in forward: the gradient flows
    objective.logit_scale.clamp_()  # what the optimizer's step hook does
    torch.testing.assert_close(objective.logit_scale(), torch.tensor(100.0))
