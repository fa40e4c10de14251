"""Reading a local transformers dual-encoder directory (``save_pretrained`` layout).

Shared by the CLIP and SigLIP towers: which family the directory holds, strict weight
loading with one clear message, the image normalisation and the tokenizer it ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from vlp.registry import ConfigError

SHOWN_KEYS = 8


def read_config(path: str, family: str, tower_name: str) -> dict:
    """The directory's config.json, checked to hold a ``family`` model (``clip`` or ``siglip``)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} has no config.json; point `pretrained` at a local directory written by save_pretrained.")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type != family:
        raise ConfigError(
            f'{path} holds a "{model_type}" model but the "{tower_name}" tower reads "{family}" models; '
            f"use the tower for {model_type} or another directory."
        )
    return config


def load_model(model_class: type[PreTrainedModel], path: str) -> PreTrainedModel:
    """Load the whole dual encoder in float32, refusing weights that leave any parameter unset."""
    model, info = model_class.from_pretrained(
        path, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True, dtype=torch.float32
    )
    mismatched = [f"{key} {tuple(saved)} vs {tuple(expected)}" for key, saved, expected in info["mismatched_keys"]]
    parts = [
        f"{label}: {_shorten(sorted(keys))}"
        for label, keys in (("missing", info["missing_keys"]), ("unexpected", info["unexpected_keys"]), ("wrong shape", mismatched))
        if keys
    ]
    if parts:
        raise ConfigError(
            f"Weights in {path} do not fit its config.json ({'; '.join(parts)}); "
            f"use the config.json saved with these weights."
        )
    return model.eval()


def _shorten(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def image_statistics(path: str, default_mean: tuple[float, ...], default_std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Mean and std (shaped for broadcasting over ``B, C, H, W``) from preprocessor_config.json, else the family's."""
    processor_file = Path(path) / "preprocessor_config.json"
    processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
    mean = processor.get("image_mean", default_mean)
    std = processor.get("image_std", default_std)
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "vocab.txt", "tokenizer.model", "sentencepiece.bpe.model")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local directory, with a fix-it message when there is none."""
    if not Path(path).is_dir():
        raise ConfigError(f"Tokenizer directory {path} does not exist; point `tokenizer` at a local directory.")
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from config.json alone: every text becomes special tokens
        raise ConfigError(
            f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...); set `tokenizer` to a local "
            f"directory holding the model's tokenizer (e.g. saved with tokenizer.save_pretrained)."
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(
            f"No usable tokenizer in {path} ({type(error).__name__}: {error}); "
            f"set `tokenizer` to a local directory holding the model's tokenizer files."
        ) from error


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int, path: str) -> None:
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"The tokenizer has {len(tokenizer)} tokens but the text model in {path} has {vocab_size}; "
            f"use the tokenizer the model was trained with."
        )


def check_embed_dim(embed_dim: int, checkpoint_dim: int, what: str, path: str) -> None:
    """A pretrained head fixes the joint space's size; ``model.embed_dim`` must agree."""
    if embed_dim != checkpoint_dim:
        raise ConfigError(
            f"model.embed_dim is {embed_dim} but the {what} in {path} outputs {checkpoint_dim} dimensions; "
            f"set model.embed_dim: {checkpoint_dim}."
        )


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], padding: str, max_length: int) -> tuple[Tensor, Tensor]:
    """Token ids and the mask of real tokens, truncated at ``max_length`` (end-of-text kept)."""
    encoded = tokenizer(
        list(texts), padding=padding, truncation=True, max_length=max_length, return_attention_mask=True, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]
