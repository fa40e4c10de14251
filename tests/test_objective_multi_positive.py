"""Multi-positive InfoNCE: exact values against SupCon's L_out written as loops, K=1 is CLIP, DDP."""

from __future__ import annotations

from pathlib import Path

import torch

from vlp.functional import infonce_loss, multi_positive_infonce

from objective_testing import assert_ddp_matches_single_process


def reference_multi_positive(images, captions, valid, scale):
    """Image i: -1/|P(i)| sum_p log softmax over valid captions; caption: CE to its image."""
    n, k = valid.shape
    x = images / images.norm(dim=1, keepdim=True)
    y = captions / captions.norm(dim=-1, keepdim=True)
    pool = [(b, c) for b in range(n) for c in range(k) if valid[b, c]]
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        own = [c for c in range(k) if valid[i, c]]
        z = torch.logsumexp(torch.stack([scale * x[i] @ y[b, c] for b, c in pool]), 0)
        image_term = -sum(scale * x[i] @ y[i, c] - z for c in own) / len(own)
        text_term = -sum(torch.log_softmax(scale * x @ y[i, c], 0)[i] for c in own) / len(own)
        total = total + (image_term + text_term) / 2
    return total / n


def _inputs(n=6, k=3, d=4):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    captions = torch.randn(n, k, d, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(n, k) < 0.6
    valid[:, 0] = True
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    return images, captions, valid, scale


def test_multi_positive_matches_reference():
    images, captions, valid, scale = _inputs()
    loss = multi_positive_infonce(images, captions, valid, scale)
    expected = reference_multi_positive(images, captions, valid, scale)
    torch.testing.assert_close(loss, expected)
    wrt = (images, captions, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


def test_one_caption_per_image_is_clip_infonce():
    images, captions, _, scale = _inputs(k=1)
    weights = torch.rand(6, dtype=torch.float64)
    valid = torch.ones(6, 1, dtype=torch.bool)
    torch.testing.assert_close(multi_positive_infonce(images, captions, valid, scale, weights),
                               infonce_loss(images, captions[:, 0], scale, weights))


def test_multi_positive_ddp_equals_single_process(tmp_path: Path):
    images, captions, valid, scale = _inputs(n=8)
    inputs = {"image_embeddings": images.detach(), "caption_embeddings": captions.detach(), "caption_valid": valid}
    assert_ddp_matches_single_process(multi_positive_infonce, inputs, {"logit_scale": scale.detach()}, tmp_path)

