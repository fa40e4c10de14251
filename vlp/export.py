"""``vlp export``: merge adapters and write the trained model as a self-contained, relocatable directory.

Every file the export's ``experiment.yaml`` names lies inside the export and is written
as ``${vars.export_dir}/<file>``; ``vars.export_dir`` is ``.`` in the file and
:func:`vlp.load` sets it to wherever the directory now is, so an export moves between
directories and machines. Towers that were built from a pretrained source (a
transformers ``CLIPModel`` directory, an open_clip checkpoint, a transformers text model,
a timm checkpoint) get that source rewritten inside the export with the merged
(LoRA-folded) weights, so the base model is not needed to load it.

Formats:

- ``safetensors``: ``model.safetensors`` with every weight of the towers and objectives,
  plus the tower sources the architecture is read from.
- ``directory``: plain library formats only: the text tower via transformers'
  ``save_pretrained`` (with its tokenizer), the timm image backbone as a safetensors
  state dict, a pair of ``hf_clip`` towers as one transformers ``CLIPModel`` directory
  (``clip/``, loadable by ``CLIPModel.from_pretrained``), a pair of ``open_clip`` towers
  as an open_clip state dict, and the heads (projections, temperatures) as safetensors.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from vlp.build import build_module
from vlp.config.experiment import experiment_from_resolved
from vlp.model import VLPModule
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint
from vlp.tuning import merge_adapters

ExportFormat = Literal["safetensors", "directory"]
HERE = "${vars.export_dir}"


class NoData:
    """Stands in for a datamodule when a model is rebuilt from stored weights: no data is read.

    The builder only asks a datamodule for captions when the text tower has no stored
    tokenizer, which a checkpoint or export always provides.
    """

    def caption_corpus(self) -> list[str]:
        raise ConfigError("This model's word-level tokenizer is not stored with it; load it from a checkpoint written by vlp fit.")

    def attach_tokenizer(self, tokenize: Any) -> None:
        pass


def restore(checkpoint_path: str | Path) -> tuple[VLPModule, dict]:
    """The trained module of a checkpoint, adapters merged, with its resolved config; no data is read."""
    checkpoint = load_vlp_checkpoint(checkpoint_path)
    config = yaml.safe_load(checkpoint["vlp"]["config"])
    experiment = experiment_from_resolved(without_evaluations(config), source=str(checkpoint_path))
    module = build_module(experiment, NoData(), tokenizer_json=checkpoint["vlp"]["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    merge_adapters(module.encoder)
    return module.eval(), config


def without_evaluations(config: dict) -> dict:
    """The config minus its evaluations, which may name files (prompt descriptions) a user of the model lacks."""
    return {**config, "eval": []}


def _contiguous(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    return {f"{prefix}{k}": v.detach().contiguous() for k, v in module.state_dict().items()}


def plain_config(config: dict) -> dict:
    """The config with every tower trained fully again (adapters are merged into the weights), rooted at the export."""
    config = yaml.safe_load(yaml.safe_dump(config))
    config["model"].pop("tuning", None)
    config["model"].pop("init_from", None)
    for objective in config["model"].get("objectives", []):
        objective.pop("init_from", None)  # pretrained temperatures: the export stores the trained ones
    config.pop("run_dir", None)
    config.setdefault("vars", {})["export_dir"] = "."
    return config


def export(checkpoint_path: str, out_dir: str, fmt: ExportFormat = "directory") -> Path:
    module, config = restore(checkpoint_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Export directory {out} is not empty; choose a new --out so nothing is overwritten.")
    out.mkdir(parents=True, exist_ok=True)
    config = plain_config(config)
    write_tower_sources(module, config, out, every_tower=fmt == "directory")
    if fmt == "safetensors":
        save_file(_contiguous(module.encoder, "encoder.") | _contiguous(module.objectives, "objectives."), str(out / "model.safetensors"))
        config["model"]["init_from"] = f"{HERE}/model.safetensors"
    else:
        heads = _contiguous(module.encoder.image_tower.projection, "encoder.image_tower.projection.")
        heads |= _contiguous(module.encoder.text_tower.projection, "encoder.text_tower.projection.")
        heads |= _contiguous(module.objectives, "objectives.")
        save_file(heads, str(out / "heads.safetensors"))
        config["model"]["init_from"] = f"{HERE}/heads.safetensors"
    (out / "experiment.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def write_tower_sources(module: VLPModule, config: dict, out: Path, every_tower: bool) -> None:
    """Write each tower's construction source into ``out`` with merged weights and point the config at it.

    ``every_tower``: also for towers built from scratch (the directory format's plain files).
    """
    model = config["model"]
    image_config, text_config = model["image_encoder"], model["text_encoder"]
    image_tower, text_tower = module.encoder.image_tower, module.encoder.text_tower
    names = (image_config["name"], text_config["name"])
    if names == ("hf_clip", "hf_clip"):
        write_clip_directory(module, image_config["pretrained"], out / "clip")
        image_config["pretrained"] = text_config["pretrained"] = f"{HERE}/clip"
        text_config.pop("tokenizer", None)
    elif names == ("open_clip", "open_clip"):
        write_open_clip_checkpoint(module, image_config["checkpoint"], out / "open_clip.safetensors")
        image_config["checkpoint"] = text_config["checkpoint"] = f"{HERE}/open_clip.safetensors"
        text_tower.tokenizer.save_pretrained(out / "tokenizer")
        text_config["tokenizer"] = f"{HERE}/tokenizer"
    elif names == ("timm", "transformers"):
        if every_tower or image_config.get("checkpoint"):
            save_file(_contiguous(image_tower.backbone), str(out / "image_backbone.safetensors"))
            image_config["checkpoint"] = f"{HERE}/image_backbone.safetensors"
        if every_tower or text_config.get("pretrained"):
            text_tower.backbone.save_pretrained(out / "text_encoder")
            text_tower.tokenizer.save_pretrained(out / "text_encoder")
            text_config.pop("config", None)
            text_config.pop("tokenizer", None)
            text_config["pretrained"] = f"{HERE}/text_encoder"
        else:
            text_tower.tokenizer.save_pretrained(out / "tokenizer")
            text_config["tokenizer"] = f"{HERE}/tokenizer"
    else:
        raise ConfigError(
            f"Export supports timm + transformers, hf_clip + hf_clip and open_clip + open_clip towers, not {names[0]} + {names[1]}; "
            f"load this run with vlp.load(checkpoint) instead."
        )


def write_clip_directory(module: VLPModule, base: str, out: Path) -> None:
    """A transformers ``CLIPModel`` directory (config, tokenizer, preprocessor) holding the trained, merged weights."""
    from transformers import CLIPConfig, CLIPModel

    image_tower, text_tower = module.encoder.image_tower, module.encoder.text_tower
    clip = CLIPModel(CLIPConfig.from_pretrained(base, local_files_only=True))
    clip.vision_model.load_state_dict(image_tower.backbone.state_dict())
    clip.visual_projection.load_state_dict(image_tower.projection.state_dict())
    clip.text_model.load_state_dict(text_tower.backbone.state_dict())
    clip.text_projection.load_state_dict(text_tower.projection.state_dict())
    scale = logit_scale_of(module)
    if scale is not None:
        clip.logit_scale.data.fill_(scale)
    clip.save_pretrained(out)
    text_tower.tokenizer.save_pretrained(out)
    if (Path(base) / "preprocessor_config.json").is_file():
        shutil.copy(Path(base) / "preprocessor_config.json", out / "preprocessor_config.json")


def logit_scale_of(module: VLPModule) -> float | None:
    """The log logit scale of the first objective that has one (CLIPModel and open_clip store it as a log)."""
    for name, value in module.objectives.state_dict().items():
        if name.endswith("logit_scale.log_value"):
            return float(value.reshape(()))
    return None


def write_open_clip_checkpoint(module: VLPModule, base: str, out: Path) -> None:
    """An open_clip state dict (ViT image tower, text transformer) with the trained, merged weights."""
    from vlp.encoders.open_clip_export import from_hf_clip_text, from_timm_vit

    image_tower, text_tower = module.encoder.image_tower, module.encoder.text_tower
    state = {f"visual.{k}": v for k, v in from_timm_vit(image_tower.backbone.state_dict(), image_tower.projection.weight).items()}
    state |= from_hf_clip_text(text_tower.backbone.state_dict(), text_tower.projection.weight)
    scale = logit_scale_of(module)
    if scale is not None:
        state["logit_scale"] = torch.tensor(scale)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out))


def load_exported(out_dir: str | Path) -> VLPModule:
    """Build the exported model from its ``experiment.yaml`` wherever the directory now is (no checkpoint, no data)."""
    return build_module(exported_experiment(out_dir), NoData()).eval()


def exported_experiment(out_dir: str | Path):
    """The export's experiment with ``vars.export_dir`` set to the directory's present location."""
    path = Path(out_dir) / "experiment.yaml"
    if not path.is_file():
        raise ConfigError(f"{out_dir} holds no experiment.yaml; pass a directory written by vlp export or a .ckpt.")
    config = yaml.safe_load(path.read_text())
    config.setdefault("vars", {})["export_dir"] = str(Path(out_dir).resolve())
    return experiment_from_resolved(without_evaluations(config), source=str(path))
