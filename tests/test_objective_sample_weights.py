"""Per-sample weights: CLIP's InfoNCE scales each pair's two cross-entropies, unweighted path unchanged."""

from __future__ import annotations

import torch

from vlp.functional import infonce_loss


def reference_weighted_infonce(images, texts, scale, weights):
    """1/B sum_i w_i (CE_i(image->text) + CE_i(text->image)) / 2, as explicit sums."""
    n = images.shape[0]
    x = images / images.norm(dim=1, keepdim=True)
    y = texts / texts.norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        row = torch.stack([scale * x[i] @ y[j] for j in range(n)])
        column = torch.stack([scale * y[i] @ x[j] for j in range(n)])
        total = total - weights[i] * ((row[i] - torch.logsumexp(row, 0)) + (column[i] - torch.logsumexp(column, 0))) / 2
    return total / n


def test_weighted_infonce_matches_reference_and_unit_weights_match_clip():
    torch.manual_seed(0)
    images = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(6, dtype=torch.float64) * 2
    loss = infonce_loss(images, texts, scale, weights)
    expected = reference_weighted_infonce(images, texts, scale, weights)
    torch.testing.assert_close(loss, expected)
    wrt = (images, texts, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(infonce_loss(images, texts, scale, torch.ones(6, dtype=torch.float64)), infonce_loss(images, texts, scale))
