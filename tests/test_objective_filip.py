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


def reference_filip_without_empty_captions(image_tokens, image_mask, text_tokens, text_mask, scale):
    """The documented choice, written directly: a caption with no valid token adds 0 to the mean over n pairs and is no negative."""
    n = image_tokens.shape[0]
    valid = [j for j in range(n) if text_mask[j].any()]
    x = image_tokens / image_tokens.norm(dim=-1, keepdim=True)
    y = text_tokens / text_tokens.norm(dim=-1, keepdim=True)

    def s_image(i, j):
        return sum(max(x[i, k] @ y[j, r] for r in range(y.shape[1]) if text_mask[j, r]) for k in range(x.shape[1])) / x.shape[1]

    def s_text(j, i):
        words = [r for r in range(y.shape[1]) if text_mask[j, r]]
        return sum(max(y[j, r] @ x[i, k] for k in range(x.shape[1])) for r in words) / len(words)

    total = torch.zeros((), dtype=x.dtype)
    for i in valid:
        to_texts = torch.stack([scale * s_image(i, j) for j in valid])
        to_images = torch.stack([scale * s_text(i, k) for k in range(n)])
        total = total - torch.log_softmax(to_texts, 0)[valid.index(i)] - torch.log_softmax(to_images, 0)[i]
    return total / (2 * n)


def test_a_caption_without_real_tokens_adds_nothing_and_the_loss_stays_finite():
    """Before: filip_loss(..., text_mask=[[1,1,0],[0,0,0]]) was inf."""
    torch.manual_seed(0)
    image_tokens = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    text_tokens = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    image_mask = torch.ones(3, 5, dtype=torch.bool)
    text_mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]]).bool()
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    loss = filip_loss(image_tokens, image_mask, text_tokens, text_mask, scale)
    expected = reference_filip_without_empty_captions(image_tokens, image_mask, text_tokens, text_mask, scale)
    torch.testing.assert_close(loss, expected)
    wrt = (image_tokens, text_tokens, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)
    assert torch.isfinite(filip_loss(image_tokens[:2], image_mask[:2], text_tokens[:2], text_mask[:2], scale))


def _fake_step(input_ids, special_ids, d=4):
    """What FILIP reads of a step: the tokenizer's special ids, the batch's ids and each tower's tokens and masks."""
    from types import SimpleNamespace

    torch.manual_seed(1)
    n, length = input_ids.shape
    image = SimpleNamespace(token_embeddings=torch.randn(n, 3, d, dtype=torch.float64), mask=torch.ones(n, 3, dtype=torch.bool))
    text = SimpleNamespace(token_embeddings=torch.randn(n, length, d, dtype=torch.float64), mask=input_ids != 2, input_ids=None)
    tokenizer = SimpleNamespace(all_special_ids=special_ids)
    return SimpleNamespace(encoder=SimpleNamespace(text_tower=SimpleNamespace(tokenizer=tokenizer)),
                           batch=SimpleNamespace(input_ids=input_ids, extras={}), image=lambda view="full": image,
                           text=lambda view="full": text, batch_sizes=lambda: (n,))


def test_bos_eos_masking_is_configurable():
    """vlp masks [BOS]/[EOS] by default; mask_special_tokens=false masks only padding, as peer implementations do."""
    from vlp.objectives.filip import FILIP

    bos, eos, pad = 0, 1, 2
    input_ids = torch.tensor([[bos, 5, 6, eos, pad], [bos, 7, eos, pad, pad], [bos, 8, 9, 4, eos]])
    step = _fake_step(input_ids, [bos, eos, pad])
    image, text = step.image(), step.text()
    losses = {}
    for mask_special in (True, False):
        objective = FILIP(mask_special_tokens=mask_special).double()
        words = text.mask & ~torch.isin(input_ids, torch.tensor([bos, eos, pad])) if mask_special else text.mask
        expected = reference_filip(image.token_embeddings, image.mask, text.token_embeddings, words, objective.logit_scale())
        losses[mask_special] = objective(step)["loss"]
        torch.testing.assert_close(losses[mask_special], expected)
    assert abs(losses[True] - losses[False]) > 1e-3
