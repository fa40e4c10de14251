"""``vlp export``: merge adapters and write the trained model in reusable formats.

``safetensors``: one file with the merged weights of the towers and objectives plus the
config, reloadable with :func:`load_exported`.
``directory``: plain library formats: the text tower via transformers' ``save_pretrained``
(with its tokenizer), the timm image backbone as a safetensors state dict, the heads
(projections, temperatures) as safetensors, and ``experiment.yaml``, a config that
builds this model from those files (a new experiment can start from it with ``base:``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from safetensors.torch import save_file
from torch import nn

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import experiment_from_resolved, load_experiment
from vlp.model import VLPModule
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint
from vlp.tuning import merge_adapters

ExportFormat = Literal["safetensors", "directory"]


def restore(checkpoint_path: str | Path) -> tuple[VLPModule, dict]:
    """The trained module of a checkpoint, adapters merged, with its resolved config."""
    checkpoint = load_vlp_checkpoint(checkpoint_path)
    config = yaml.safe_load(checkpoint["vlp"]["config"])
    experiment = experiment_from_resolved(config, source=str(checkpoint_path))
    module = build_module(experiment, build_datamodule(experiment), tokenizer_json=checkpoint["vlp"]["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    merge_adapters(module.encoder)
    return module.eval(), config


def _contiguous(module: nn.Module, prefix: str = "") -> dict:
    return {f"{prefix}{k}": v.detach().contiguous() for k, v in module.state_dict().items()}


def plain_config(config: dict) -> dict:
    """The config with every tower trained fully again (adapters are merged into the weights)."""
    config = yaml.safe_load(yaml.safe_dump(config))
    config["model"].pop("tuning", None)
    config["model"].pop("init_from", None)
    config.pop("run_dir", None)
    return config


def export(checkpoint_path: str, out_dir: str, fmt: ExportFormat = "directory") -> Path:
    module, config = restore(checkpoint_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Export directory {out} is not empty; choose a new --out so nothing is overwritten.")
    out.mkdir(parents=True, exist_ok=True)
    config = plain_config(config)
    if fmt == "safetensors":
        save_file(_contiguous(module.encoder, "encoder.") | _contiguous(module.objectives, "objectives."), str(out / "model.safetensors"))
        config["model"]["init_from"] = str((out / "model.safetensors").resolve())
    else:
        _write_directory(module, config, out)
    tokenizer = module.encoder.text_tower.tokenizer
    if fmt == "safetensors":
        tokenizer.save_pretrained(out / "tokenizer")
        config["model"]["text_encoder"]["tokenizer"] = str((out / "tokenizer").resolve())
    (out / "experiment.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _write_directory(module: VLPModule, config: dict, out: Path) -> None:
    image_tower, text_tower = module.encoder.image_tower, module.encoder.text_tower
    if config["model"]["image_encoder"]["name"] != "timm" or config["model"]["text_encoder"]["name"] != "transformers":
        raise ConfigError("Directory export supports timm image and transformers text towers; use --format safetensors.")
    save_file(_contiguous(image_tower.backbone), str(out / "image_backbone.safetensors"))
    text_tower.backbone.save_pretrained(out / "text_encoder")
    text_tower.tokenizer.save_pretrained(out / "text_encoder")
    heads = _contiguous(image_tower.projection, "encoder.image_tower.projection.")
    heads |= _contiguous(text_tower.projection, "encoder.text_tower.projection.")
    heads |= _contiguous(module.objectives, "objectives.")
    save_file(heads, str(out / "heads.safetensors"))
    model = config["model"]
    model["image_encoder"]["checkpoint"] = str((out / "image_backbone.safetensors").resolve())
    model["text_encoder"].pop("config", None)
    model["text_encoder"].pop("tokenizer", None)
    model["text_encoder"]["pretrained"] = str((out / "text_encoder").resolve())
    model["init_from"] = str((out / "heads.safetensors").resolve())


def load_exported(out_dir: str | Path) -> VLPModule:
    """Build the exported model from its ``experiment.yaml`` (no checkpoint needed)."""
    experiment = load_experiment(Path(out_dir) / "experiment.yaml")
    return build_module(experiment, build_datamodule(experiment)).eval()
