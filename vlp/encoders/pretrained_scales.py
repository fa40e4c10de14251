"""Temperature and bias of a pretrained dual encoder, for objectives that start from it.

Both transformers (``CLIPModel``, ``SiglipModel``) and open_clip store ``logit_scale`` as
the log of the multiplier applied to cosine similarities, and SigLIP's ``logit_bias``
as is, so the values are returned unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from torch import Tensor

from vlp.encoders.weights import read_state_dict
from vlp.registry import ConfigError

SCALE_KEY, BIAS_KEY = "logit_scale", "logit_bias"
WRAPPER_PREFIX = "module."


@dataclass(frozen=True)
class PretrainedScales:
    log_logit_scale: float
    logit_bias: float | None


def read_scales(path: str, need_bias: bool = False) -> PretrainedScales:
    """Read from a transformers model directory or an open_clip state-dict file (.pt/.bin/.safetensors)."""
    tensors = _directory_scalars(Path(path)) if Path(path).is_dir() else _file_scalars(Path(path))
    if SCALE_KEY not in tensors:
        raise ConfigError(f"{path} holds no {SCALE_KEY}; point init_from at the CLIP/SigLIP checkpoint the towers come from.")
    if need_bias and BIAS_KEY not in tensors:
        raise ConfigError(f"{path} holds no {BIAS_KEY} (not a sigmoid-loss model); remove init_from to start from init_bias.")
    bias = tensors.get(BIAS_KEY)
    return PretrainedScales(float(tensors[SCALE_KEY].reshape(())), None if bias is None else float(bias.reshape(())))


def _file_scalars(path: Path) -> dict[str, Tensor]:
    state = read_state_dict(path)
    return {key.removeprefix(WRAPPER_PREFIX): value for key, value in state.items() if key.removeprefix(WRAPPER_PREFIX) in (SCALE_KEY, BIAS_KEY)}


def _directory_scalars(path: Path) -> dict[str, Tensor]:
    """Read only the two scalars, from whichever weights layout ``save_pretrained`` wrote."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return _safetensors_scalars(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {
            key: tensor
            for shard in {weight_map[k] for k in (SCALE_KEY, BIAS_KEY) if k in weight_map}
            for key, tensor in _safetensors_scalars(path / shard).items()
        }
    legacy = path / "pytorch_model.bin"
    if legacy.is_file():
        return _file_scalars(legacy)
    raise ConfigError(f"{path} has no model.safetensors, sharded safetensors or pytorch_model.bin; point init_from at a save_pretrained directory.")


def _safetensors_scalars(path: Path) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as weights:
        return {key: weights.get_tensor(key) for key in (SCALE_KEY, BIAS_KEY) if key in weights.keys()}
