"""Value checks that types alone cannot express: finite numbers, sensible ranges, free-form mappings.

Each failure is one sentence naming the key, where it was set (a file or the command
line) and what to write instead, raised before anything is built.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from vlp.registry import ConfigError, did_you_mean

Where = Callable[[str], str]

# Key path -> (smallest allowed value, what it means); checked when the key is set.
AT_LEAST: dict[str, tuple[float, str]] = {
    "data.batch_size": (1, "samples per batch"),
    "data.num_workers": (0, "loader worker processes (0: load in the main process)"),
    "data.train_size": (1, "training samples"),
    "data.val_size": (1, "validation samples"),
    "data.image_size": (1, "pixels"),
    "model.embed_dim": (1, "embedding width"),
    "optim.lr": (0, "learning rate"),
    "optim.weight_decay": (0, "weight decay"),
    "optim.warmup_steps": (0, "warmup steps"),
    "optim.eps": (0, "AdamW epsilon"),
    "optim.min_lr_ratio": (0, "final fraction of the learning rate"),
    "checkpoint.every_n_steps": (1, "optimizer steps between checkpoints"),
    "checkpoint.every_minutes": (0, "minutes between checkpoints"),
    "checkpoint.keep": (-1, "numbered checkpoints kept (-1: all)"),
}


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, f"{prefix}[{i}]")]
    return [(prefix, node)]


def check_finite(config: dict[str, Any], where: Where) -> None:
    """Refuse NaN and infinities anywhere: they only ever turn a run's weights into NaN."""
    for path, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"`{path}` in {where(path)} is {value}, but every number in an experiment must be finite; set a finite value.")


def check_ranges(config: dict[str, Any], where: Where) -> None:
    """Refuse values below the smallest that makes sense (a batch of 0, a negative learning rate, ...)."""
    leaves = dict(_leaves(config))
    for path, (lowest, meaning) in AT_LEAST.items():
        value = leaves.get(path)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < lowest:
            raise ConfigError(f"`{path}` in {where(path)} is {value} but must be at least {lowest} ({meaning}); fix the value.")
    for index, objective in enumerate(config.get("model", {}).get("objectives") or []):
        weight = objective.get("weight", 1.0) if isinstance(objective, dict) else 1.0
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight < 0:
            path = f"model.objectives[{index}].weight"
            raise ConfigError(f"`{path}` in {where(path)} is {weight} but must be at least 0 (a negative weight maximises the loss); fix the value.")


# Accepted by every transformers config through ``**kwargs`` without appearing in the signatures.
COMMON_CONFIG_KEYS = {"model_type", "output_attentions", "attn_implementation", "tie_word_embeddings", "use_cache", "torch_dtype", "name_or_path"}


def check_transformers_config(fields: dict[str, Any] | None, path: str, where: Where) -> None:
    """Check a free-form transformers config mapping against the config class its ``model_type`` names.

    transformers stores unknown keys as attributes without complaint, so a typo such as
    ``hiden_size`` would silently train a model of the default size.
    """
    if not isinstance(fields, dict) or "model_type" not in fields:
        return
    from transformers import CONFIG_MAPPING

    model_type = fields["model_type"]
    if model_type not in CONFIG_MAPPING:
        key = f"{path}.model_type"
        raise ConfigError(
            f'`{key}` in {where(key)} is "{model_type}", which transformers does not know.'
            f"{did_you_mean(str(model_type), list(CONFIG_MAPPING.keys()))} Use a text model type such as clip_text_model or bert."
        )
    config_class = CONFIG_MAPPING[model_type]
    known = set(COMMON_CONFIG_KEYS) | set(getattr(config_class, "attribute_map", {}))
    for cls in config_class.__mro__:
        if "__init__" in vars(cls):
            known |= {n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    for key in fields:
        if key not in known:
            key_path = f"{path}.{key}"
            raise ConfigError(
                f"Unknown key `{key_path}` in {where(key_path)}: {config_class.__name__} has no field `{key}`."
                f"{did_you_mean(key, sorted(known - {'self'}))} Fix or remove it."
            )


def check_timm_kwargs(model_name: Any, kwargs: dict[str, Any] | None, path: str, where: Where) -> None:
    """Check ``model_kwargs`` against the timm model's constructor by building it on the meta device (no memory, no init cost)."""
    if not kwargs or not isinstance(model_name, str):
        return
    import re

    import timm
    import torch

    if not timm.is_model(model_name.split(".")[0]):
        return  # the encoder reports unknown model names with similar ones
    try:
        with torch.device("meta"):
            timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected is None:
            raise ConfigError(f"`{path}` in {where(path)} does not fit timm model \"{model_name}\" ({error}); fix the arguments.") from error
        key = unexpected.group(1)
        key_path = f"{path}.{key}"
        raise ConfigError(
            f"Unknown key `{key_path}` in {where(key_path)}: timm model \"{model_name}\" takes no argument `{key}`; fix or remove it."
        ) from error
    except Exception:
        return  # other construction problems (sizes, ...) are reported by the encoder when it is built
