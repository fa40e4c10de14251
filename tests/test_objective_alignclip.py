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


def reference_alignclip(images, texts, scale, alpha, beta):
    """The official loss (sarahESL/AlignCLIP align_clip/loss.py, ClipInModalityLoss with both separations and
    semantic supervision) written directly: beta * (CE_text_sep + CE_image_sep) + alpha * (CE_i2t + CE_t2i), one scale."""
    n = images.shape[0]
    x = images / images.norm(dim=1, keepdim=True)
    y = texts / texts.norm(dim=1, keepdim=True)
    ce_i2t = -sum(torch.log_softmax(scale * x[i] @ y.T, 0)[i] for i in range(n)) / n
    ce_t2i = -sum(torch.log_softmax(scale * y[i] @ x.T, 0)[i] for i in range(n)) / n
    separations = reference_separation(images, texts, texts, scale) + reference_separation(texts, images, texts, scale)
    return beta * separations + alpha * (ce_i2t + ce_t2i)


def test_alignclip_recipe_matches_the_official_loss():
    from vlp.functional import alignclip_loss

    images, texts, scale = _inputs()
    loss = alignclip_loss(images, texts, scale, alpha=1.0, beta=0.5)
    expected = reference_alignclip(images, texts, scale, 1.0, 0.5)
    torch.testing.assert_close(loss, expected)
    wrt = (images, texts, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


def test_alignclip_recipe_ddp_equals_single_process(tmp_path: Path):
    from functools import partial

    from vlp.functional import alignclip_loss

    images, texts, scale = _inputs(n=8)
    inputs = {"image_embeddings": images.detach(), "text_embeddings": texts.detach()}
    assert_ddp_matches_single_process(partial(alignclip_loss, alpha=1.0, beta=0.5), inputs, {"logit_scale": scale.detach()}, tmp_path)


def test_example_experiment_is_the_official_recipe():
    """experiments/alignclip.yaml: one objective (one temperature), alpha 1, beta 0.5, both modalities separated."""
    from vlp.config import load_experiment

    (objective,) = load_experiment(str(Path(__file__).resolve().parents[1] / "experiments" / "alignclip.yaml"), []).objectives
    assert objective.name == "alignclip" and objective.weight == 1.0
    assert objective.params == {"alpha": 1.0, "beta": 0.5, "separate_image": True, "separate_text": True}
