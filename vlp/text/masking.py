"""BERT's token corruption for masked language modelling (Devlin et al., 2019).

Each maskable token (a real token that is not special: never padding, [BOS]/[EOS] or the
like) is chosen independently with probability 15%, as in the transformers and ALBEF
collators (BERT's original script fixes the count per sequence instead). A chosen token is
replaced by [MASK] 80% of the time, by a random token 10% of the time and kept 10% of the
time; the label of every chosen token is its original id, every other label is the
ignore index, so a cross-entropy over the labels scores exactly the chosen tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


@dataclass
class MaskedTokens:
    """Corrupted token ids (B, L) and their labels (B, L): original id where chosen, else ``IGNORE_INDEX``."""

    input_ids: Tensor
    labels: Tensor

    @property
    def chosen(self) -> Tensor:
        return self.labels != IGNORE_INDEX


def maskable_tokens(input_ids: Tensor, attention_mask: Tensor, special_ids: list[int]) -> Tensor:
    """Real tokens that are not special tokens: the only ones BERT masking may touch."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def bert_mask(
    input_ids: Tensor,
    maskable: Tensor,
    mask_token_id: int,
    random_token_ids: Tensor,
    generator: torch.Generator | None = None,
    mask_probability: float = 0.15,
    replace_with_mask: float = 0.8,
    replace_with_random: float = 0.1,
) -> MaskedTokens:
    """Corrupt ``input_ids`` (B, L) where ``maskable`` (B, L) allows it.

    ``random_token_ids`` are the candidates for the random replacement (the vocabulary's
    ordinary tokens; BERT draws from the whole vocabulary, which would sometimes insert a
    [PAD] or [EOS] inside a caption). The same ``generator`` state gives the same result.
    """
    if not 0.0 <= replace_with_mask + replace_with_random <= 1.0:
        raise ValueError("replace_with_mask + replace_with_random must lie in [0, 1].")
    chosen = maskable.bool() & (_uniform(input_ids, generator) < mask_probability)
    kind = _uniform(input_ids, generator)
    to_mask = chosen & (kind < replace_with_mask)
    to_random = chosen & (kind >= replace_with_mask) & (kind < replace_with_mask + replace_with_random)
    picks = (_uniform(input_ids, generator) * len(random_token_ids)).long().clamp(max=len(random_token_ids) - 1)
    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_token_id
    corrupted[to_random] = random_token_ids.to(input_ids.device)[picks[to_random]]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return MaskedTokens(corrupted, labels)


def ordinary_token_ids(vocab_size: int, special_ids: list[int], device: torch.device | None = None) -> Tensor:
    """Every id of the vocabulary except the special ones: BERT's random replacements."""
    ids = torch.arange(vocab_size, device=device)
    return ids[~torch.isin(ids, torch.tensor(sorted(set(special_ids)), device=device, dtype=ids.dtype))]


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) draws shaped like ``like``, from ``generator`` (on its own device) when given."""
    device = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, device=device).to(like.device)
