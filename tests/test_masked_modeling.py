"""Masked-modelling math and heads against direct float64 formulas (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.heads.fusion import CrossAttentionFusion
from vlp.heads.mlm import MLMHead
from vlp.heads.patch_decoder import TextGuidedPatchDecoder
from vlp.masked_modeling import masked_patch_loss, masked_token_loss, patchify, text_guided_keep_indices
from vlp.text.masking import IGNORE_INDEX



@pytest.fixture(autouse=True)
def float64():
    """Every test here runs in float64 (modules and tensors built inside the test)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def token_case(seed: int = 0, batch: int = 4, length: int = 6, vocab: int = 7):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(vocab, (batch, length), generator=generator)
    labels[torch.rand(batch, length, generator=generator) < 0.6] = IGNORE_INDEX
    labels[0, 0], labels[-1, :] = 2, IGNORE_INDEX  # at least one scored; the last row scores none
    return logits, labels


def test_masked_token_loss_is_the_mean_negative_log_likelihood_of_the_chosen_tokens():
    logits, labels = token_case()
    logits.requires_grad_(True)
    loss = masked_token_loss(logits, labels)
    loss.backward()
    chosen = [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1]) if labels[b, t] != IGNORE_INDEX]
    expected, grad = 0.0, torch.zeros_like(logits)
    for b, t in chosen:
        z = logits[b, t].detach()
        partition = sum(math.exp(v) for v in z.tolist())
        expected -= math.log(math.exp(z[labels[b, t]].item()) / partition) / len(chosen)
        probabilities = torch.tensor([math.exp(v) / partition for v in z.tolist()])
        probabilities[labels[b, t]] -= 1
        grad[b, t] = probabilities / len(chosen)
    assert abs(loss.item() - expected) < 1e-12
    torch.testing.assert_close(logits.grad, grad)


def test_masked_token_loss_with_nothing_chosen_is_zero_with_a_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = masked_token_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_patchify_follows_row_major_patches_of_row_column_channel_pixels():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                for r in range(4):
                    for c in range(4):
                        for ch in range(3):
                            assert patches[b, i * 3 + j, (r * 4 + c) * 3 + ch] == images[b, ch, i * 4 + r, j * 4 + c]


def test_patchify_order_is_timm_s_token_order():
    from timm.layers import PatchEmbed

    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=48, bias=False)
    with torch.no_grad():  # a convolution that copies each patch's (channel, row, column) pixels
        embed.proj.weight.copy_(torch.eye(48).reshape(48, 3, 4, 4))
    images = torch.randn(2, 3, 8, 8)
    tokens = embed(images)  # (B, N, 48) in (channel, row, column) order
    expected = tokens.reshape(2, 4, 3, 16).transpose(2, 3).reshape(2, 4, 48)
    torch.testing.assert_close(patchify(images, 4), expected)


def patch_case(seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    prediction = torch.randn(3, 5, 6, generator=generator, requires_grad=True)
    target = torch.rand(3, 5, 6, generator=generator)
    masked = torch.rand(3, 5, generator=generator) < 0.5
    masked[0, 0] = True
    return prediction, target, masked


def direct_patch_loss(prediction, target, masked, normalize):
    total, count = 0.0, 0
    for b in range(masked.shape[0]):
        for n in range(masked.shape[1]):
            if not masked[b, n]:
                continue
            t = target[b, n].tolist()
            if normalize:
                mean = sum(t) / len(t)
                variance = sum((v - mean) ** 2 for v in t) / (len(t) - 1)
                t = [(v - mean) / math.sqrt(variance + 1e-6) for v in t]
            total += sum((p - v) ** 2 for p, v in zip(prediction[b, n].tolist(), t)) / len(t)
            count += 1
    return total / count


def test_masked_patch_loss_is_mae_s_mean_squared_error_on_hidden_patches():
    for normalize in (False, True):
        prediction, target, masked = patch_case()
        loss = masked_patch_loss(prediction, target, masked, normalize_target=normalize)
        loss.backward()
        expected = direct_patch_loss(prediction.detach(), target, masked, normalize)
        assert abs(loss.item() - expected) < 1e-12
        reference = target
        if normalize:
            reference = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        grad = 2 * (prediction.detach() - reference) / (6 * int(masked.sum())) * masked[..., None]
        torch.testing.assert_close(prediction.grad, grad)


def test_text_guided_keep_indices_keep_the_highest_text_patch_scores():
    generator = torch.Generator().manual_seed(4)
    text, patches = torch.randn(3, 8, generator=generator), torch.randn(3, 10, 8, generator=generator)
    kept = text_guided_keep_indices(text, patches, keep=4)
    for b in range(3):
        scores = [sum(t * p for t, p in zip(text[b].tolist(), patch)) for patch in patches[b].tolist()]
        best = sorted(range(10), key=lambda n: -scores[n])[:4]
        assert kept[b].tolist() == sorted(best)


def test_tied_mlm_head_scores_against_the_token_embeddings():
    torch.manual_seed(5)
    head = MLMHead(width=6, vocab_size=9, tied=True)
    nn_bias = torch.randn(9)
    with torch.no_grad():
        head.bias.copy_(nn_bias)
    hidden, embeddings = torch.randn(4, 6), torch.randn(9, 6, requires_grad=True)
    logits = head(hidden, embeddings)
    dense = head.transform[0]
    x = hidden @ dense.weight.T + dense.bias
    x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact GELU
    x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-12).sqrt()
    x = x * head.transform[2].weight + head.transform[2].bias
    torch.testing.assert_close(logits, x @ embeddings.T + nn_bias)
    logits.sum().backward()  # d(sum logits)/dE = sum over rows of the transformed hidden states
    torch.testing.assert_close(embeddings.grad, x.detach().sum(0).expand(9, 6))
    assert not any(p is embeddings for p in head.parameters())


def test_untied_mlm_head_owns_its_decoder():
    head = MLMHead(width=6, vocab_size=9, tied=False)
    assert head(torch.randn(2, 6)).shape == (2, 9)
    assert head.decoder.weight.shape == (9, 6)


def test_fusion_ignores_padding_and_the_order_of_image_tokens():
    torch.manual_seed(6)
    fusion = CrossAttentionFusion(text_width=8, image_width=5, depth=2, num_heads=2)
    text, image = torch.randn(2, 4, 8), torch.randn(2, 7, 5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    fused = fusion(text, mask, image)
    changed_padding = text.clone()
    changed_padding[0, 3] = 100.0
    torch.testing.assert_close(fusion(changed_padding, mask, image)[0, :3], fused[0, :3])
    permuted = fusion(text, mask, image[:, torch.randperm(7)])
    torch.testing.assert_close(permuted, fused)
    other_image = fusion(text, mask, torch.randn(2, 7, 5))
    assert (other_image - fused).abs().max() > 1e-3


def test_patch_decoder_places_kept_tokens_at_their_grid_positions():
    torch.manual_seed(7)
    decoder = TextGuidedPatchDecoder(image_width=5, text_width=6, grid=(2, 3), patch_pixels=4, width=8, depth=1, num_heads=2)
    kept, indices = torch.randn(2, 3, 5), torch.tensor([[0, 2, 5], [1, 3, 4]])
    text, text_mask = torch.randn(2, 4, 6), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    out = decoder(kept, indices, text, text_mask)
    assert out.shape == (2, 6, 4)
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(decoder(kept[:, order], indices[:, order], text, text_mask), out)
    # Direct: the decoder's input is the [MASK] token everywhere, the embedded kept tokens at their indices.
    tokens = decoder.mask_token.expand(2, 6, 8).clone()
    for b in range(2):
        for k in range(3):
            tokens[b, indices[b, k]] = decoder.embed(kept[b, k])
    tokens = tokens + decoder.positions
    direct = decoder.predict(decoder.layers(tokens, decoder.text_projection(text), memory_key_padding_mask=~text_mask))
    torch.testing.assert_close(out, direct)
    padded_text = text.clone()
    padded_text[0, 2:] = 50.0
    torch.testing.assert_close(decoder(kept, indices, padded_text, text_mask), out)
