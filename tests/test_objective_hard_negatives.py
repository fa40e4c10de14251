"""HN-NCE (DiHT) and LLaVE: exact values and gradients against the papers' formulas, DDP, learning."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from vlp.functional import hn_nce_loss, infonce_loss, llave_loss

from objective_testing import assert_ddp_matches_single_process


def _normalised(x):
    return x / x.norm(dim=1, keepdim=True)


def reference_hn_nce(images, texts, scale, alpha, beta, weights=None):
    """Radenovic et al. 2023, Eq. 3, per direction, averaged over the two directions."""
    n = images.shape[0]
    s = scale * _normalised(images) @ _normalised(texts).T
    total = torch.zeros((), dtype=images.dtype)
    for sim in (s, s.T):
        for i in range(n):
            others = [j for j in range(n) if j != i]
            z = sum(torch.exp(beta * sim[i, k]) for k in others)
            negatives = sum((n - 1) * torch.exp(beta * sim[i, j]) / z * torch.exp(sim[i, j]) for j in others)
            w = 1.0 if weights is None else weights[i]
            total = total - w * torch.log(torch.exp(sim[i, i]) / (alpha * torch.exp(sim[i, i]) + negatives))
    return total / (2 * n)


def reference_llave(images, texts, scale, alpha):
    """Lan et al. 2025, Eq. 5-6: negatives weighted by exp(alpha * sg(cosine))."""
    n = images.shape[0]
    cos = _normalised(images) @ _normalised(texts).T
    total = torch.zeros((), dtype=images.dtype)
    for c in (cos, cos.T):
        for i in range(n):
            negatives = sum(torch.exp(alpha * c[i, j].detach()) * torch.exp(scale * c[i, j]) for j in range(n) if j != i)
            total = total - torch.log(torch.exp(scale * c[i, i]) / (torch.exp(scale * c[i, i]) + negatives))
    return total / (2 * n)


def _inputs(n=6, d=5):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    return images, texts, scale


def _assert_same_value_and_gradients(loss, expected, wrt):
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, wrt, retain_graph=True), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("alpha,beta,weighted", [(1.0, 0.5, False), (0.0, 0.3, False), (0.7, 1.0, True)])
def test_hn_nce_matches_reference(alpha, beta, weighted):
    images, texts, scale = _inputs()
    weights = torch.rand(6, dtype=torch.float64) if weighted else None
    loss = hn_nce_loss(images, texts, scale, alpha, beta, weights)
    _assert_same_value_and_gradients(loss, reference_hn_nce(images, texts, scale, alpha, beta, weights), (images, texts, scale))


def test_hn_nce_with_alpha_1_beta_0_is_infonce():
    images, texts, scale = _inputs()
    torch.testing.assert_close(hn_nce_loss(images, texts, scale, 1.0, 0.0), infonce_loss(images, texts, scale))


def test_llave_matches_reference_and_alpha_0_is_infonce():
    images, texts, scale = _inputs()
    _assert_same_value_and_gradients(llave_loss(images, texts, scale, 2.5), reference_llave(images, texts, scale, 2.5), (images, texts, scale))
    torch.testing.assert_close(llave_loss(images, texts, scale, 0.0), infonce_loss(images, texts, scale))


@pytest.mark.parametrize("loss_fn", [functools.partial(hn_nce_loss, alpha=0.5, beta=0.5), functools.partial(llave_loss, alpha=3.0)])
def test_hard_negative_losses_ddp_equal_single_process(loss_fn, tmp_path: Path):
    images, texts, scale = _inputs(n=8)
    inputs = {"image_embeddings": images.detach(), "text_embeddings": texts.detach(),
              "sample_weight": torch.linspace(0.5, 1.5, 8, dtype=torch.float64)}
    assert_ddp_matches_single_process(loss_fn, inputs, {"logit_scale": scale.detach()}, tmp_path)



def test_llave_example_fixes_the_logit_scale_at_50_with_alpha_9():
    """LLaVE's official training scripts: logit scale 50, not learned; alpha 9."""
    from vlp.config import load_experiment

    (component,) = load_experiment(str(Path(__file__).resolve().parents[1] / "experiments" / "llave.yaml"), []).objectives
    objective = component.cls(**component.params)
    torch.testing.assert_close(objective.logit_scale(), torch.tensor(50.0))
    assert objective.alpha == 9.0 and not any(p.requires_grad for p in objective.parameters())
