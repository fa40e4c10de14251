"""A word-level tokenizer built from a caption corpus, for text towers trained from scratch.

Templated captions have a small closed vocabulary, so one id per lower-cased word is
the simplest tokenizer that loses nothing. It is a real ``tokenizers`` tokenizer wrapped
as ``PreTrainedTokenizerFast``, saved with every checkpoint as JSON. Its special tokens
are padding, unknown, begin/end of text and [MASK] (for masked language modelling).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, MASK = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, MASK)


def build_word_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level vocabulary of ``corpus`` (sorted, so the ids do not depend on order)."""
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = set()
    for text in corpus:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words):
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return tokenizer_from_json(tokenizer.to_str())


def tokenizer_from_json(serialised: str) -> PreTrainedTokenizerFast:
    """Rebuild a word tokenizer saved by :func:`build_word_tokenizer` (e.g. from a checkpoint).

    Vocabularies saved before [MASK] existed load unchanged, without a mask token (masked
    language modelling then refuses them with a clear message).
    """
    backend = Tokenizer.from_str(serialised)
    mask = {"mask_token": MASK} if backend.token_to_id(MASK) is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        **mask,
    )
