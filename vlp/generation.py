"""Greedy and beam search over any next-token model, given as a function of the prefix.

The search knows nothing of towers or decoders: a model is a function
``next_log_probs(prefixes, rows) -> (R, V)`` giving the log-probabilities of the next
token after each prefix (R, t), where ``rows`` (R,) says which sample of the batch each
prefix belongs to (beam search asks for several prefixes per sample). Every sequence
starts with ``bos_id``; after ``eos_id`` a sequence is continued with ``pad_id``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

NextLogProbs = Callable[[Tensor, Tensor], Tensor]


def greedy_search(
    next_log_probs: NextLogProbs, batch_size: int, bos_id: int, eos_id: int, pad_id: int, max_new_tokens: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The most likely next token at every step; (B, 1 + generated) ids, stopping when all have ended."""
    tokens = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        chosen = next_log_probs(tokens, rows).argmax(dim=-1)
        chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
        tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
        finished |= chosen == eos_id
        if finished.all():
            break
    return tokens


def beam_search(
    next_log_probs: NextLogProbs, batch_size: int, bos_id: int, eos_id: int, pad_id: int, max_new_tokens: int,
    beam_size: int, length_penalty: float = 0.0, device: torch.device | str = "cpu",
) -> Tensor:
    """The best sequence of :func:`ranked_beam_search` per sample, (B, T)."""
    return ranked_beam_search(next_log_probs, batch_size, bos_id, eos_id, pad_id, max_new_tokens, beam_size,
                              length_penalty, device)[:, 0]


def ranked_beam_search(
    next_log_probs: NextLogProbs, batch_size: int, bos_id: int, eos_id: int, pad_id: int, max_new_tokens: int,
    beam_size: int, length_penalty: float = 0.0, device: torch.device | str = "cpu",
) -> Tensor:
    """Keep the ``beam_size`` most likely prefixes per sample; return all final beams, best first, (B, beam_size, T).

    A prefix's score is the sum of its tokens' log-probabilities. An ended prefix stays in
    its beam with its score frozen (it is continued by padding at no cost), so a short,
    likely caption competes with longer ones until the end. Beams are ranked by
    score / length ** ``length_penalty`` (0: plain likelihood; 1: per-token likelihood),
    length counting the generated tokens up to and including the end token.
    With ``beam_size`` 1 this is exactly greedy search.
    """
    beams = beam_size
    tokens = torch.full((batch_size * beams, 1), bos_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device).repeat_interleave(beams)
    scores = torch.full((batch_size, beams), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live prefix to start with, so the first step does not pick duplicates
    finished = torch.zeros(batch_size, beams, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size, beams, device=device)
    first_row = torch.arange(batch_size, device=device).unsqueeze(1) * beams
    for _ in range(max_new_tokens):
        log_probs = next_log_probs(tokens, rows).view(batch_size, beams, -1)
        vocab = log_probs.shape[-1]
        padding_only = torch.full_like(log_probs, float("-inf"))
        padding_only[..., pad_id] = 0.0
        log_probs = torch.where(finished.unsqueeze(-1), padding_only, log_probs)
        candidates = (scores.to(log_probs.dtype).unsqueeze(-1) + log_probs).view(batch_size, beams * vocab)
        top_scores, flat = candidates.topk(beams, dim=-1)
        source, chosen = flat // vocab, flat % vocab
        tokens = torch.cat([tokens[(first_row + source).view(-1)], chosen.view(-1, 1)], dim=1)
        was_finished = finished.gather(1, source)
        lengths = lengths.gather(1, source) + (~was_finished).to(lengths.dtype)
        finished = was_finished | (chosen == eos_id)
        scores = top_scores
        if finished.all():
            break
    ranking = scores / lengths.clamp(min=1) ** length_penalty
    order = ranking.argsort(dim=-1, descending=True, stable=True)  # ties keep beam order, as argmax does
    return tokens.view(batch_size, beams, -1)[torch.arange(batch_size, device=device).unsqueeze(1), order]
