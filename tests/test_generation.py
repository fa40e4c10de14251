"""Greedy and beam search on models whose sequence likelihoods are known exactly."""

from __future__ import annotations

import itertools
import math

import torch

from vlp.generation import beam_search, greedy_search, ranked_beam_search

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4
VOCAB = 5


class MarkovModel:
    """Next-token log-probabilities given by a table indexed by (sample, step, previous token)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.log_softmax(dim=-1)  # (batch, steps, vocab, vocab)

    def __call__(self, prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        step = prefixes.shape[1] - 1
        return self.table[rows, step, prefixes[:, -1]]

    def log_likelihood(self, sample: int, tokens: list[int]) -> float:
        return sum(float(self.table[sample, t, tokens[t], tokens[t + 1]]) for t in range(len(tokens) - 1))


def _strip(tokens: torch.Tensor) -> list[int]:
    """Drop the padding that follows the end token."""
    out = tokens.tolist()
    return out[: out.index(EOS) + 1] if EOS in out else out


def _best_by_enumeration(model: MarkovModel, sample: int, max_new_tokens: int) -> tuple[list[int], float]:
    """The most likely output: a sequence that ends at its first end token, or runs to the length limit."""
    best, best_score = None, -math.inf
    for length in range(1, max_new_tokens + 1):
        for body in itertools.product(range(VOCAB), repeat=length):
            if EOS in body[:-1] or (length < max_new_tokens and body[-1] != EOS):
                continue
            tokens = [BOS, *body]
            score = model.log_likelihood(sample, tokens)
            if score > best_score:
                best, best_score = tokens, score
    return best, best_score


def test_beam_search_with_one_beam_is_greedy_search():
    model = MarkovModel(3 * torch.randn(6, 8, VOCAB, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    greedy = greedy_search(model, 6, BOS, EOS, PAD, max_new_tokens=7)
    beam = beam_search(model, 6, BOS, EOS, PAD, max_new_tokens=7, beam_size=1)
    assert torch.equal(beam, greedy)
    # Greedy takes the arg-max at every step, checked directly on each sequence.
    for sample, tokens in enumerate(greedy):
        tokens = _strip(tokens)
        for t in range(len(tokens) - 1):
            assert tokens[t + 1] == int(model.table[sample, t, tokens[t]].argmax())


def test_beam_search_finds_the_more_likely_caption_that_greedy_misses():
    """After BOS, "a" (0.6) beats "b" (0.4), but "a" is followed by a spread-out distribution while "b" ends surely."""
    probabilities = torch.full((1, 3, VOCAB, VOCAB), 1.0 / VOCAB, dtype=torch.float64)
    probabilities[0, 0, BOS] = torch.tensor([0.0, 0.0, 0.0, 0.6, 0.4], dtype=torch.float64)
    probabilities[0, 1, A] = torch.tensor([0.0, 0.0, 0.34, 0.33, 0.33], dtype=torch.float64)
    probabilities[0, 1, B] = torch.tensor([0.0, 0.0, 0.9, 0.1, 0.0], dtype=torch.float64)
    model = MarkovModel(probabilities.log())
    greedy = _strip(greedy_search(model, 1, BOS, EOS, PAD, max_new_tokens=3)[0])
    beam = _strip(beam_search(model, 1, BOS, EOS, PAD, max_new_tokens=3, beam_size=2)[0])
    assert greedy == [BOS, A, EOS] and beam == [BOS, B, EOS]
    assert model.log_likelihood(0, beam) > model.log_likelihood(0, greedy)
    assert math.isclose(model.log_likelihood(0, beam), math.log(0.4 * 0.9), rel_tol=1e-12)
    assert math.isclose(model.log_likelihood(0, greedy), math.log(0.6 * 0.34), rel_tol=1e-12)


def test_a_beam_wider_than_all_prefixes_finds_the_most_likely_sequence():
    """With as many beams as prefixes, beam search is exhaustive: it must match enumeration, sample by sample."""
    model = MarkovModel(2 * torch.randn(4, 3, VOCAB, VOCAB, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    found = beam_search(model, 4, BOS, EOS, PAD, max_new_tokens=3, beam_size=VOCAB**2)
    for sample in range(4):
        best, best_score = _best_by_enumeration(model, sample, 3)
        assert _strip(found[sample]) == best
        assert math.isclose(model.log_likelihood(sample, _strip(found[sample])), best_score, rel_tol=1e-12)


def test_ranked_beams_are_the_most_likely_sequences_in_order():
    """All prefixes fit in the beams, so the ranked beams must be the enumeration's best sequences, best first."""
    model = MarkovModel(2 * torch.randn(2, 3, VOCAB, VOCAB, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    ranked = ranked_beam_search(model, 2, BOS, EOS, PAD, max_new_tokens=3, beam_size=VOCAB**2)
    assert torch.equal(ranked[:, 0], beam_search(model, 2, BOS, EOS, PAD, max_new_tokens=3, beam_size=VOCAB**2))
    for sample in range(2):
        scored = []
        for length in range(1, 4):
            for body in itertools.product(range(VOCAB), repeat=length):
                if EOS in body[:-1] or (length < 3 and body[-1] != EOS):
                    continue
                scored.append((model.log_likelihood(sample, [BOS, *body]), [BOS, *body]))
        expected = [tokens for _, tokens in sorted(scored, key=lambda pair: -pair[0])[:5]]
        assert [_strip(tokens) for tokens in ranked[sample, :5]] == expected
