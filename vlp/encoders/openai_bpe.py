"""Write OpenAI CLIP's BPE tokenizer as a transformers ``CLIPTokenizer`` directory, offline.

open_clip's OpenAI/LAION models need that tokenizer, and vlp reads tokenizers from local
directories only. open_clip_torch ships the BPE merges (``bpe_simple_vocab_16e6.txt.gz``);
this rebuilds the vocabulary the way OpenAI's tokenizer does: 256 byte symbols, the same
with an end-of-word mark, one token per merge, then start- and end-of-text.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from transformers import CLIPTokenizer

MERGES = 49152 - 256 - 2  # merges OpenAI's tokenizer uses: 49408 tokens in all
END_OF_WORD = "</w>"


def byte_symbols() -> list[str]:
    """The 256 byte symbols in OpenAI's vocabulary order: printable bytes as themselves, then the rest shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def save_openai_bpe_tokenizer(bpe_file: str | Path, directory: str | Path) -> CLIPTokenizer:
    """Build the tokenizer from a gzipped merges file and ``save_pretrained`` it to ``directory``."""
    lines = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")[1 : MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=merges)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
