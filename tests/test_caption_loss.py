"""The captioning loss: exact against the token cross-entropy formula, against open_clip's CoCaLoss
where pad conventions agree, right where they differ, and exact over the global batch under DDP."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from open_clip.loss import CoCaLoss
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vlp.generative import caption_loss, next_token_targets
from vlp.text.word_tokenizer import build_word_tokenizer

from objective_testing import assert_ddp_matches_single_process

CAPTIONS = ["a small red circle at the top left", "a circle", "a large blue square and a circle"]


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean over real target tokens of (1-e) * -log p(target) + e * mean over the vocabulary of -log p(v)."""
    terms = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                log_p = logits[b, t] - torch.logsumexp(logits[b, t], dim=0)
                terms.append((1 - smoothing) * -log_p[labels[b, t]] + smoothing * -log_p.mean())
    return torch.stack(terms).mean()


def reference_gradient(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    """d loss / d logits = (softmax - target distribution) / (number of real tokens), zero elsewhere."""
    vocab = logits.shape[-1]
    target = torch.nn.functional.one_hot(labels, vocab).to(logits.dtype) * (1 - smoothing) + smoothing / vocab
    return (logits.softmax(-1) - target) * mask.unsqueeze(-1) / mask.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_caption_loss_and_gradient_equal_the_formula(smoothing: float):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 6, 11, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 11, (3, 6), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    loss = caption_loss(logits, labels, mask, smoothing)
    torch.testing.assert_close(loss, reference_loss(logits.detach(), labels, mask, smoothing), rtol=1e-12, atol=1e-12)
    loss.backward()
    torch.testing.assert_close(logits.grad, reference_gradient(logits.detach(), labels, mask, smoothing), rtol=1e-12, atol=1e-12)


def _logits_for(input_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(input_ids.shape[0], input_ids.shape[1] - 1, vocab, generator=generator, dtype=torch.float64)


def _open_clip_caption_term(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    loss = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0, pad_id=pad_id)
    unused = torch.zeros(labels.shape[0], 4, dtype=logits.dtype)
    return loss(unused, unused, logits, labels, torch.tensor(1.0), output_dict=True)["caption_loss"]


def test_equals_open_clip_coca_loss_when_pad_is_id_zero():
    """vlp's word tokenizer pads with id 0, open_clip's convention: the two losses are one."""
    tokenizer = build_word_tokenizer(CAPTIONS)
    assert tokenizer.pad_token_id == 0
    encoded = tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    labels, mask = next_token_targets(encoded["input_ids"], encoded["attention_mask"])
    logits = _logits_for(encoded["input_ids"], len(tokenizer))
    torch.testing.assert_close(caption_loss(logits, labels, mask), _open_clip_caption_term(logits, labels, 0), rtol=1e-12, atol=1e-12)


def _tokenizer_with_word_at_id_zero(pad_is_eos: bool) -> PreTrainedTokenizerFast:
    """A word tokenizer whose id 0 is the real word "a" (as "!" is in open_clip's BPE)."""
    vocab = {"a": 0, "circle": 1, "small": 2, "red": 3, "[EOS]": 4, "[BOS]": 5, "[PAD]": 6, "[UNK]": 7}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    pad = "[EOS]" if pad_is_eos else "[PAD]"
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def test_counts_a_real_token_with_id_zero_which_open_clips_default_drops():
    tokenizer = _tokenizer_with_word_at_id_zero(pad_is_eos=False)
    texts = ["[BOS] a small red circle a [EOS]", "[BOS] a circle [EOS]"]
    encoded = tokenizer(texts, padding="longest", return_tensors="pt")
    labels, mask = next_token_targets(encoded["input_ids"], encoded["attention_mask"])
    assert (labels[mask] == 0).sum() == 3 and (labels[~mask] == 6).all()
    logits = _logits_for(encoded["input_ids"], len(tokenizer))
    ours = caption_loss(logits, labels, mask)
    torch.testing.assert_close(ours, reference_loss(logits, labels, mask, 0.0), rtol=1e-12, atol=1e-12)
    # open_clip's default ignores the three "a" targets and trains on the padding instead.
    assert not torch.isclose(ours, _open_clip_caption_term(logits, labels, 0))
    # Told the real pad id, open_clip agrees.
    torch.testing.assert_close(ours, _open_clip_caption_term(logits, labels, tokenizer.pad_token_id), rtol=1e-12, atol=1e-12)


def test_keeps_the_end_token_target_when_pad_and_eos_share_an_id():
    """The CLIP tokenizer in transformers pads with its end token: ignoring the pad id would never teach stopping."""
    tokenizer = _tokenizer_with_word_at_id_zero(pad_is_eos=True)
    encoded = tokenizer(["[BOS] a small red circle [EOS]", "[BOS] a circle [EOS]"], padding="longest", return_tensors="pt")
    labels, mask = next_token_targets(encoded["input_ids"], encoded["attention_mask"])
    assert (labels[mask] == tokenizer.eos_token_id).sum() == 2
    logits = _logits_for(encoded["input_ids"], len(tokenizer))
    ours = caption_loss(logits, labels, mask)
    torch.testing.assert_close(ours, reference_loss(logits, labels, mask, 0.0), rtol=1e-12, atol=1e-12)
    assert not torch.isclose(ours, _open_clip_caption_term(logits, labels, tokenizer.pad_token_id))


def test_caption_loss_under_ddp_is_the_global_token_mean(tmp_path):
    """Ranks holding different numbers of real tokens still give the global per-token mean and its gradient."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 5, 9, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 9, (4, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)

    assert_ddp_matches_single_process(
        partial(caption_loss, label_smoothing=0.1), {"logits": logits, "labels": labels, "label_mask": mask}, {}, tmp_path
    )
