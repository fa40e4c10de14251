"""A masked text view: BERT's corruption of the caption tokens, for masked language modelling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vlp.batch import Batch
from vlp.encoders.features import Features
from vlp.registry import VIEWS, ConfigError
from vlp.text.masking import bert_mask, maskable_tokens, ordinary_token_ids

LABELS = "mlm_labels"  # Features.meta key: original ids of the chosen tokens, IGNORE_INDEX elsewhere


@VIEWS.register("bert_mask")
@dataclass(frozen=True)
class BertMask:
    """The text tower on captions corrupted as BERT does (see ``vlp.text.masking``).

    ``mask_probability`` of the real, non-special tokens are chosen; of those,
    ``replace_with_mask`` become the tokenizer's mask token, ``replace_with_random`` a
    random ordinary token of the tokenizer, the rest stay. ``Features.input_ids`` holds
    the corrupted ids and ``Features.meta["mlm_labels"]`` the labels. Draws come from
    torch's global generator, which ``vlp fit`` seeds.
    """

    tower: ClassVar[str] = "text"
    mask_probability: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_probability <= 1.0:
            raise ConfigError(f"bert_mask mask_probability must be in (0, 1], got {self.mask_probability}; BERT uses 0.15.")
        if min(self.replace_with_mask, self.replace_with_random) < 0 or self.replace_with_mask + self.replace_with_random > 1:
            raise ConfigError(
                "bert_mask replace_with_mask and replace_with_random must be non-negative and sum to at most 1 "
                f"(got {self.replace_with_mask} and {self.replace_with_random}); BERT uses 0.8 and 0.1."
            )

    def __call__(self, encoder, batch: Batch) -> Features:
        tokenizer = encoder.text_tower.tokenizer
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                "The text tokenizer has no mask token, so captions cannot be masked; use the default word "
                "tokenizer (it has [MASK]) or a tokenizer with a mask token (e.g. BERT's)."
            )
        special = list(tokenizer.all_special_ids)
        ids = batch.input_ids
        masked = bert_mask(
            ids, maskable_tokens(ids, batch.attention_mask, special), tokenizer.mask_token_id,
            ordinary_token_ids(len(tokenizer), special, ids.device),
            mask_probability=self.mask_probability, replace_with_mask=self.replace_with_mask,
            replace_with_random=self.replace_with_random,
        )
        features = encoder.text_tower(masked.input_ids, batch.attention_mask)
        features.input_ids = masked.input_ids
        features.meta[LABELS] = masked.labels
        return features
