"""CoCa's modules: the attentional pooler against the attention formula; the decoder is causal and reads the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlp.heads.caption_decoder import AttentionalPooler, MultimodalTextDecoder


def test_attentional_pooler_equals_multi_head_attention_written_out():
    torch.manual_seed(0)
    pooler = AttentionalPooler(context_dim=6, width=8, n_queries=3, heads=2).double()
    tokens = torch.randn(2, 5, 6, dtype=torch.float64)
    attention = pooler.attention
    context = F.layer_norm(tokens, (6,), pooler.context_norm.weight, pooler.context_norm.bias)
    q = pooler.queries @ attention.q_proj_weight.T + attention.in_proj_bias[:8]
    k = context @ attention.k_proj_weight.T + attention.in_proj_bias[8:16]
    v = context @ attention.v_proj_weight.T + attention.in_proj_bias[16:]
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = (q[:, part] @ k[..., part].transpose(1, 2) / 2.0).softmax(dim=-1)  # sqrt(head dim 4) = 2
        heads.append(weights @ v[..., part])
    pooled = torch.cat(heads, dim=-1) @ attention.out_proj.weight.T + attention.out_proj.bias
    expected = F.layer_norm(pooled, (8,), pooler.output_norm.weight, pooler.output_norm.bias)
    torch.testing.assert_close(pooler(tokens), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("image_queries", [4, 0])
def test_decoder_is_causal_and_attends_to_the_image(image_queries: int):
    torch.manual_seed(0)
    decoder = MultimodalTextDecoder(text_width=12, image_width=10, vocab_size=7, width=16, depth=2, heads=2, image_queries=image_queries).double().eval()
    text = torch.randn(2, 6, 12, dtype=torch.float64)
    image = torch.randn(2, 9, 10, dtype=torch.float64)
    logits = decoder(text, decoder.image_memory(image))
    assert logits.shape == (2, 6, 7)
    assert decoder.image_memory(image).shape == (2, image_queries or 9, 16)
    changed_late = text.clone()
    changed_late[:, 4:] = torch.randn(2, 2, 12, dtype=torch.float64)
    later = decoder(changed_late, decoder.image_memory(image))
    torch.testing.assert_close(later[:, :4], logits[:, :4], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(later[:, 4:], logits[:, 4:])
    other_image = decoder(text, decoder.image_memory(torch.randn(2, 9, 10, dtype=torch.float64)))
    assert not torch.allclose(other_image[:, 0], logits[:, 0])
