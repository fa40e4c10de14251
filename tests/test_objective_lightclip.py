"""LightCLIP: softened-label InfoNCE and relaxed-matching token alignment against loops, schedule, DDP."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from vlp.functional import infonce_loss, relaxed_matching_loss, soft_label_infonce
from vlp.objectives.lightclip_soft_labels import LightCLIPSoftLabels

from objective_testing import assert_ddp_matches_single_process


def reference_soft_labels(images, texts, scale, mass, weights=None):
    """Row i: -sum_j y_ij log softmax_j(scale x_i.y_j), y_ii = 1 - mass, y_ij = mass / (N - 1); both ways."""
    n = images.shape[0]
    x = images / images.norm(dim=1, keepdim=True)
    y = texts / texts.norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        image_row = torch.log_softmax(torch.stack([scale * x[i] @ y[j] for j in range(n)]), 0)
        text_row = torch.log_softmax(torch.stack([scale * y[i] @ x[j] for j in range(n)]), 0)
        term = sum(-((1 - mass) if j == i else mass / (n - 1)) * (image_row[j] + text_row[j]) for j in range(n))
        total = total + (1.0 if weights is None else weights[i]) * term / 2
    return total / n


def reference_relaxed_matching(image_tokens, image_mask, text_tokens, text_mask, scale, weights=None):
    """s_ij: mean over words of text j of the similarity to its best patch of image i; InfoNCE both ways."""
    n = image_tokens.shape[0]
    x = image_tokens / image_tokens.norm(dim=-1, keepdim=True)
    y = text_tokens / text_tokens.norm(dim=-1, keepdim=True)
    s = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        patches = [x[i, k] for k in range(x.shape[1]) if image_mask[i, k]]
        for j in range(n):
            words = [y[j, r] for r in range(y.shape[1]) if text_mask[j, r]]
            s[i, j] = sum(max(w @ p for p in patches) for w in words) / len(words)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        w = 1.0 if weights is None else weights[i]
        total = total - w * (torch.log_softmax(scale * s[i], 0)[i] + torch.log_softmax(scale * s[:, i], 0)[i]) / 2
    return total / n


def _pooled(n=6, d=5):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    return images, texts, scale


def _tokens(n=5, patches=4, words=6, d=3):
    torch.manual_seed(1)
    image_tokens = torch.randn(n, patches, d, dtype=torch.float64, requires_grad=True)
    text_tokens = torch.randn(n, words, d, dtype=torch.float64, requires_grad=True)
    image_mask = torch.ones(n, patches, dtype=torch.bool)
    image_mask[1, 3] = False
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2])[:n]
    text_mask = torch.arange(words)[None] < lengths[:, None]
    text_mask[0, 0] = False  # a special token inside a real caption
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    return image_tokens, image_mask, text_tokens, text_mask, scale


def _assert_same_value_and_gradients(loss, expected, wrt):
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, wrt, retain_graph=True), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mass,weighted", [(0.3, False), (0.05, True)])
def test_soft_label_infonce_matches_reference(mass, weighted):
    images, texts, scale = _pooled()
    weights = torch.rand(6, dtype=torch.float64) * 2 if weighted else None
    _assert_same_value_and_gradients(
        soft_label_infonce(images, texts, scale, mass, weights), reference_soft_labels(images, texts, scale, mass, weights),
        (images, texts, scale),
    )


def test_zero_negative_mass_is_infonce():
    images, texts, scale = _pooled()
    torch.testing.assert_close(soft_label_infonce(images, texts, scale, 0.0), infonce_loss(images, texts, scale))


def test_negative_mass_grows_linearly_with_progress():
    objective = LightCLIPSoftLabels(max_negative_mass=0.2)
    assert [objective.negative_mass(p) for p in (0.0, 0.25, 1.0, 1.5)] == pytest.approx([0.0, 0.05, 0.2, 0.2])


@pytest.mark.parametrize("chunk_size,weighted", [(64, False), (2, True)])
def test_relaxed_matching_loss_matches_reference(chunk_size, weighted):
    image_tokens, image_mask, text_tokens, text_mask, scale = _tokens()
    weights = torch.rand(5, dtype=torch.float64) if weighted else None
    _assert_same_value_and_gradients(
        relaxed_matching_loss(image_tokens, image_mask, text_tokens, text_mask, scale, chunk_size, weights),
        reference_relaxed_matching(image_tokens, image_mask, text_tokens, text_mask, scale, weights),
        (image_tokens, text_tokens, scale),
    )


def test_soft_label_infonce_ddp_equals_single_process(tmp_path: Path):
    images, texts, scale = _pooled(n=8)
    inputs = {"image_embeddings": images.detach(), "text_embeddings": texts.detach(),
              "sample_weight": torch.linspace(0.5, 1.5, 8, dtype=torch.float64)}
    loss_fn = functools.partial(soft_label_infonce, negative_mass=0.2)
    assert_ddp_matches_single_process(loss_fn, inputs, {"logit_scale": scale.detach()}, tmp_path)


def relaxed_matching_on_trimmed_captions(text_tokens, text_mask, **kwargs):
    """Drop trailing padding columns, as a tokenizer padding to the longest caption would."""
    length = int(text_mask.any(0).nonzero().max()) + 1
    return relaxed_matching_loss(text_tokens=text_tokens[:, :length], text_mask=text_mask[:, :length], chunk_size=3, **kwargs)


def test_relaxed_matching_ddp_equals_single_process(tmp_path: Path):
    image_tokens, image_mask, text_tokens, text_mask, scale = _tokens(n=8)
    text_mask[4:, 4:] = False  # rank 1's captions are shorter, so gathering must pad them
    inputs = {"image_tokens": image_tokens.detach(), "image_mask": image_mask,
              "text_tokens": text_tokens.detach(), "text_mask": text_mask,
              "sample_weight": torch.linspace(0.5, 1.5, 8, dtype=torch.float64)}
    assert_ddp_matches_single_process(relaxed_matching_on_trimmed_captions, inputs, {"logit_scale": scale.detach()}, tmp_path)
