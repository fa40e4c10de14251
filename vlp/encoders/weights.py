"""Safe loading of local weight files (safetensors or ``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from vlp.registry import ConfigError

NESTED_KEYS = ("state_dict", "model", "module", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle, unwrapping common nesting."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Weights file {path} does not exist; check the path in your config.")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"Weights file {path} cannot be read safely ({type(error).__name__}: {error}); "
            f"convert it to safetensors or a plain tensor state dict."
        ) from error
    for key in NESTED_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"Weights file {path} does not hold a state dict; save `model.state_dict()`.")
    return state


def load_into(module: nn.Module, state: dict[str, Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, reporting missing/unexpected/mis-shaped keys in one message."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ConfigError(
            f"Weights in {source} do not fit the configured model ({'; '.join(parts)}); "
            f"check that the model name and its arguments match the checkpoint."
        )
    module.load_state_dict(state)
