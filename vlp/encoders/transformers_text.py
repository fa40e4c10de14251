"""Text towers from transformers: any text model, built from a config or loaded locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from vlp.config.checks import check_transformers_config
from vlp.encoders.memory import configure_backbone
from vlp.encoders.towers import Tower
from vlp.registry import TEXT_ENCODERS, ConfigError

Pooling = Literal["auto", "eos", "cls", "mean", "pooler"]
POOLER_MODEL_TYPES = ("clip_text_model", "siglip_text_model")


@TEXT_ENCODERS.register("transformers")
class TransformersTextEncoder(Tower):
    """A transformers text model plus its tokenizer.

    ``config`` builds the model from scratch (``model_type`` plus that model's config
    fields, e.g. ``clip_text_model`` for CLIP's causal transformer); ``pretrained`` loads
    a local directory. The tokenizer comes from ``tokenizer`` (a local directory), else
    from ``pretrained``, else it is a word-level vocabulary of the training captions.

    Pooling: ``eos`` takes the last real token (CLIP's end-of-text pooling), ``cls`` the
    first, ``mean`` averages real tokens, ``pooler`` uses the model's own pooler output;
    ``auto`` is ``pooler`` for CLIP/SigLIP text models and ``mean`` otherwise.
    """

    def __init__(
        self,
        embed_dim: int,
        default_tokenizer: Callable[[], PreTrainedTokenizerBase],
        config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        pooling: Pooling = "auto",
        max_length: int = 77,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        if (config is None) == (pretrained is None):
            raise ConfigError(
                "The text encoder needs exactly one of `config` (build from scratch) or "
                "`pretrained` (a local model directory); set one and remove the other."
            )
        self.tokenizer = _load_tokenizer(tokenizer or pretrained) if (tokenizer or pretrained) else default_tokenizer()
        backbone = _build_model(config, pretrained, self.tokenizer, max_length)
        super().__init__(backbone.config.hidden_size, embed_dim)
        self.backbone = backbone
        self.max_length = max_length
        self.pooling = _resolve_pooling(pooling, backbone.config.model_type)
        self.pretrained_parts = ("backbone.",) if pretrained else ()
        _check_tokenizer_fits(self.tokenizer, backbone.config, max_length)
        configure_backbone(backbone, grad_checkpointing, compile, "text")

    @staticmethod
    def validate_params(params: dict[str, Any], path: str, where: Callable[[str], str]) -> None:
        """Check the free-form ``config`` against the transformers config class (typos would pass silently)."""
        check_transformers_config(params.get("config"), f"{path}.config", where)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, padded to the longest text, truncated at ``max_length``."""
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = output.last_hidden_state
        mask = attention_mask.bool()
        if self.pooling == "pooler":
            pooled = output.pooler_output
        elif self.pooling == "eos":
            last = attention_mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return pooled, hidden, mask


def _resolve_pooling(pooling: str, model_type: str) -> str:
    if pooling != "auto":
        return pooling
    return "pooler" if model_type in POOLER_MODEL_TYPES else "mean"


def _load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    if not Path(path).is_dir():
        raise ConfigError(f"Tokenizer directory {path} does not exist; point `tokenizer` or `pretrained` at a local directory.")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _build_model(config: dict[str, Any] | None, pretrained: str | None, tokenizer: PreTrainedTokenizerBase, max_length: int):
    if pretrained is not None:
        if not Path(pretrained).is_dir():
            raise ConfigError(f"Pretrained text model directory {pretrained} does not exist; fix `pretrained` in the text encoder config.")
        return AutoModel.from_pretrained(pretrained, local_files_only=True)
    fields = dict(config or {})
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ConfigError("The text encoder `config` needs a `model_type` (e.g. clip_text_model or bert); add it.")
    fields.setdefault("vocab_size", len(tokenizer))
    fields.setdefault("max_position_embeddings", max_length)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, name)
        if token_id is not None:
            fields.setdefault(name, token_id)
    try:
        model_config = AutoConfig.for_model(model_type, **fields)
    except ValueError as error:
        raise ConfigError(f'transformers knows no model_type "{model_type}" ({error}); use a text model type such as clip_text_model or bert.') from error
    return AutoModel.from_config(model_config)


def _check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, config: Any, max_length: int) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"The tokenizer has {len(tokenizer)} tokens but the text model's vocab_size is "
            f"{config.vocab_size}; use the tokenizer the model was trained with or raise vocab_size."
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"max_length {max_length} exceeds the text model's {positions} position embeddings; "
            f"lower max_length to at most {positions}."
        )
