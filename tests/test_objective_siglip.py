"""SigLIP: exact values and gradients against the paper's sum, and DDP equivalence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vlp.functional import sigmoid_loss
from vlp.objectives.siglip import SigLIP

from objective_testing import assert_ddp_matches_single_process


def reference_sigmoid(images, texts, scale, bias, weights=None):
    """Zhai et al. 2023, Alg. 1: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    n = images.shape[0]
    images = images / images.norm(dim=1, keepdim=True)
    texts = texts / texts.norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=images.dtype)
    for i in range(n):
        w = 1.0 if weights is None else weights[i]
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - w * torch.log(1 / (1 + torch.exp(-z * (scale * images[i] @ texts[j] + bias))))
    return total / n


def _inputs(n=6, d=5):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    return images, texts, scale, bias


@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_loss_value_and_gradients_match_reference(weighted):
    images, texts, scale, bias = _inputs()
    weights = torch.rand(6, dtype=torch.float64) * 2 if weighted else None
    loss = sigmoid_loss(images, texts, scale, bias, weights)
    expected = reference_sigmoid(images, texts, scale, bias, weights)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, (images, texts, scale, bias)),
                         torch.autograd.grad(expected, (images, texts, scale, bias))):
        torch.testing.assert_close(got, want)


def test_siglip_initialised_at_log_10_and_minus_10():
    objective = SigLIP()
    assert objective.log_logit_scale.item() == pytest.approx(math.log(10))
    assert objective.logit_bias.item() == -10.0


def test_sigmoid_loss_ddp_equals_single_process(tmp_path: Path):
    images, texts, scale, bias = _inputs(n=8)
    inputs = {"image_embeddings": images.detach(), "text_embeddings": texts.detach(),
              "sample_weight": torch.linspace(0.5, 1.5, 8, dtype=torch.float64)}
    params = {"logit_scale": scale.detach(), "logit_bias": bias.detach()}
    assert_ddp_matches_single_process(sigmoid_loss, inputs, params, tmp_path)
