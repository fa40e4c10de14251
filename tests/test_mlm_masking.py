"""BERT masking: what it may touch, its proportions on a large seeded sample, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from vlp.text.masking import IGNORE_INDEX, bert_mask, maskable_tokens, ordinary_token_ids
from vlp.text.word_tokenizer import build_word_tokenizer, tokenizer_from_json

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, BOS, EOS, MASK]
VOCAB = 30


def captions(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS] words [EOS] [PAD]...: random lengths, a few [UNK] inside the words."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    ids[torch.rand(batch, length, generator=generator) < 0.05] = UNK
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    positions = torch.arange(length)
    attention = positions < lengths[:, None]
    ids[:, 0] = BOS
    ids[torch.arange(batch), lengths - 1] = EOS
    ids[~attention] = PAD
    return ids, attention.long()


def corrupt(ids, attention, seed: int):
    maskable = maskable_tokens(ids, attention, SPECIAL)
    generator = torch.Generator().manual_seed(seed)
    return maskable, bert_mask(ids, maskable, MASK, ordinary_token_ids(VOCAB, SPECIAL), generator)


def within_binomial(successes: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(successes - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def test_padding_and_special_tokens_are_never_touched():
    ids, attention = captions(64, 20, seed=0)
    maskable, masked = corrupt(ids, attention, seed=1)
    assert maskable.sum() > 0 and (~maskable & attention.bool()).sum() > 0
    assert torch.equal(masked.input_ids[~maskable], ids[~maskable])
    assert (masked.labels[~maskable] == IGNORE_INDEX).all()
    assert torch.equal(masked.labels[masked.chosen], ids[masked.chosen])
    replaced = masked.input_ids != ids
    assert not torch.isin(masked.input_ids[replaced & (masked.input_ids != MASK)], torch.tensor(SPECIAL)).any()


def test_proportions_on_a_large_sample_are_bert_s():
    ids, attention = captions(4000, 32, seed=2)
    maskable, masked = corrupt(ids, attention, seed=3)
    candidates = VOCAB - len(SPECIAL)
    n_maskable, chosen = int(maskable.sum()), masked.chosen
    n_chosen = int(chosen.sum())
    assert n_maskable > 50_000
    assert within_binomial(n_chosen, n_maskable, 0.15)
    to_mask = int((masked.input_ids[chosen] == MASK).sum())
    unchanged = int((masked.input_ids[chosen] == ids[chosen]).sum())
    random_other = n_chosen - to_mask - unchanged
    assert within_binomial(to_mask, n_chosen, 0.8)
    # A random replacement equals the original with probability 1/candidates.
    assert within_binomial(unchanged, n_chosen, 0.1 + 0.1 / candidates)
    assert within_binomial(random_other, n_chosen, 0.1 * (1 - 1 / candidates))
    # Random replacements are uniform over the ordinary tokens.
    replaced = masked.input_ids[chosen & (masked.input_ids != MASK) & (masked.input_ids != ids)]
    counts = torch.bincount(replaced, minlength=VOCAB)[len(SPECIAL):].double()
    expected = counts.sum() / candidates
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 60  # 24 degrees of freedom: P(chi2 > 60) < 1e-4


def test_same_generator_state_same_masks_other_seed_other_masks():
    ids, attention = captions(32, 16, seed=4)
    first, second, other = corrupt(ids, attention, 5)[1], corrupt(ids, attention, 5)[1], corrupt(ids, attention, 6)[1]
    assert torch.equal(first.input_ids, second.input_ids) and torch.equal(first.labels, second.labels)
    assert not torch.equal(first.labels, other.labels)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_mask_probability_bounds(probability):
    ids, attention = captions(16, 12, seed=7)
    maskable = maskable_tokens(ids, attention, SPECIAL)
    masked = bert_mask(ids, maskable, MASK, ordinary_token_ids(VOCAB, SPECIAL), torch.Generator().manual_seed(0),
                       mask_probability=probability, replace_with_mask=1.0, replace_with_random=0.0)
    assert torch.equal(masked.chosen, maskable if probability == 1.0 else torch.zeros_like(maskable))
    assert (masked.input_ids[maskable] == (MASK if probability == 1.0 else ids[maskable])).all()


def test_word_tokenizer_has_a_mask_token_and_old_vocabularies_still_load():
    tokenizer = build_word_tokenizer(["a red circle", "a blue square"])
    assert tokenizer.mask_token == "[MASK]" and tokenizer.mask_token_id in tokenizer.all_special_ids
    assert tokenizer_from_json(tokenizer.backend_tokenizer.to_str()).mask_token_id == tokenizer.mask_token_id
    # A vocabulary saved before [MASK] existed (four special tokens) keeps its ids and has no mask token.
    old_vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "a": 4, "circle": 5, "red": 6}
    old = Tokenizer(models.WordLevel(vocab=old_vocab, unk_token="[UNK]"))
    old.pre_tokenizer = pre_tokenizers.Whitespace()
    old.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    restored = tokenizer_from_json(old.to_str())
    assert restored.mask_token is None
    assert restored("a red circle")["input_ids"] == [2, 4, 6, 5, 3]
