"""FILIP: exact token-wise similarities and loss against the paper's sums, chunking, DDP, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.functional import filip_loss, token_wise_similarity

from objective_testing import assert_ddp_matches_single_process


def reference_filip(image_tokens, image_mask, text_tokens, text_mask, scale, weights=None):
    """Yao et al. 2022, Eq. 3-5, as loops over pairs and valid tokens."""
    n = image_tokens.shape[0]
    x = image_tokens / image_tokens.norm(dim=-1, keepdim=True)
    y = text_tokens / text_tokens.norm(dim=-1, keepdim=True)
    s_image = torch.zeros(n, n, dtype=x.dtype)
    s_text = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        patches = [x[i, k] for k in range(x.shape[1]) if image_mask[i, k]]
        for j in range(n):
            words = [y[j, r] for r in range(y.shape[1]) if text_mask[j, r]]
            s_image[i, j] = sum(max(p @ w for w in words) for p in patches) / len(patches)
            s_text[j, i] = sum(max(w @ p for p in patches) for w in words) / len(words)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(n):
        w = 1.0 if weights is None else weights[i]
        total = total - w * torch.log_softmax(scale * s_image[i], 0)[i] - w * torch.log_softmax(scale * s_text[i], 0)[i]
    return total / (2 * n)


def _inputs(n=5, patches=4, words=6, d=3):
    torch.manual_seed(0)
    image_tokens = torch.randn(n, patches, d, dtype=torch.float64, requires_grad=True)
    text_tokens = torch.randn(n, words, d, dtype=torch.float64, requires_grad=True)
    image_mask = torch.ones(n, patches, dtype=torch.bool)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2])[:n]
    text_mask = torch.arange(words)[None] < lengths[:, None]
    text_mask[0, 0] = False  # a special token inside a real caption
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    return image_tokens, image_mask, text_tokens, text_mask, scale


@pytest.mark.parametrize("chunk_size,weighted", [(64, False), (2, False), (3, True)])
def test_filip_loss_value_and_gradients_match_reference(chunk_size, weighted):
    image_tokens, image_mask, text_tokens, text_mask, scale = _inputs()
    weights = torch.rand(5, dtype=torch.float64) if weighted else None
    loss = filip_loss(image_tokens, image_mask, text_tokens, text_mask, scale, chunk_size, weights)
    expected = reference_filip(image_tokens, image_mask, text_tokens, text_mask, scale, weights)
    torch.testing.assert_close(loss, expected)
    wrt = (image_tokens, text_tokens, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


def test_chunked_similarity_never_builds_the_full_pair_tensor():
    queries, keys = torch.randn(8, 4, 3), torch.randn(8, 5, 3)
    full = torch.einsum("and,bmd->abnm", queries, keys).amax(3).mean(2)
    mask_q, mask_k = torch.ones(8, 4, dtype=torch.bool), torch.ones(8, 5, dtype=torch.bool)
    seen = []
    original = torch.einsum
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "einsum", lambda eq, *ops: seen.append(original(eq, *ops).shape) or original(eq, *ops))
        chunked = token_wise_similarity(queries, mask_q, keys, mask_k, chunk_size=3)
    torch.testing.assert_close(chunked, full)
    assert max(s.numel() for s in seen) <= 3 * 3 * 4 * 5


def filip_on_trimmed_captions(text_tokens, text_mask, **kwargs):
    """Drop trailing padding columns, as a tokenizer padding to the longest caption would."""
    length = int(text_mask.any(0).nonzero().max()) + 1
    return filip_loss(text_tokens=text_tokens[:, :length], text_mask=text_mask[:, :length], chunk_size=3, **kwargs)


def test_filip_ddp_equals_single_process(tmp_path: Path):
    image_tokens, image_mask, text_tokens, text_mask, scale = _inputs(n=8)
    text_mask[4:, 4:] = False  # rank 1's captions are shorter, so gathering must pad them
    inputs = {"image_tokens": image_tokens.detach(), "image_mask": image_mask,
              "text_tokens": text_tokens.detach(), "text_mask": text_mask,
              "sample_weight": torch.linspace(0.5, 1.5, 8, dtype=torch.float64)}
    assert_ddp_matches_single_process(filip_on_trimmed_captions, inputs, {"logit_scale": scale.detach()}, tmp_path)
