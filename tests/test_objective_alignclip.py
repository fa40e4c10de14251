"""AlignCLIP's intra-modality separation: exact values against the paper's formula, DDP, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.functional import intra_modality_separation_loss

from objective_testing import assert_ddp_matches_single_process


def reference_separation(x, y, semantic, scale, weights=None):
    """Row i: softmax over j of scale*(1 - cos(t_i, t_j)) x_i.x_j (j != i), positive scale*x_i.y_i."""
    n = x.shape[0]
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    t = semantic.detach() / semantic.detach().norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        logits = torch.stack([scale * (x[i] @ y[i] if j == i else (1 - t[i] @ t[j]) * (x[i] @ x[j])) for j in range(n)])
        total = total - (1.0 if weights is None else weights[i]) * torch.log_softmax(logits, 0)[i]
    return total / n


def _inputs(n=6, d=4):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    return images, texts, scale


@pytest.mark.parametrize("weighted", [False, True])
def test_separation_matches_reference(weighted):
    images, texts, scale = _inputs()
    weights = torch.rand(6, dtype=torch.float64) if weighted else None
    loss = intra_modality_separation_loss(images, texts, texts, scale, weights)
    expected = reference_separation(images, texts, texts, scale, weights)
    torch.testing.assert_close(loss, expected)
    wrt = (images, texts, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


def test_separation_ddp_equals_single_process(tmp_path: Path):
    images, texts, scale = _inputs(n=8)
    inputs = {"embeddings": images.detach(), "paired_embeddings": texts.detach(), "semantic_embeddings": texts.detach() + 0.3}
    assert_ddp_matches_single_process(intra_modality_separation_loss, inputs, {"logit_scale": scale.detach()}, tmp_path)
