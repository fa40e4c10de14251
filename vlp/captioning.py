"""``vlp caption``: caption image files with a checkpoint whose objectives include a caption decoder."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import experiment_from_resolved
from vlp.data.decode import open_image
from vlp.data.quality import BadSample
from vlp.data.transforms import data_config, image_transform
from vlp.evaluation.captioning import captioning_objective
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint


def caption_files(checkpoint_path: str, image_paths: list[str], beam_size: int = 1, batch_size: int = 32) -> list[str]:
    """One caption per image file, prepared as the checkpoint's validation images are."""
    if beam_size < 1:
        raise ConfigError(f"--beam {beam_size} is not a beam width; use 1 (greedy search) or more.")
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"Image file {missing[0]} does not exist; pass paths of existing image files.")
    checkpoint = load_vlp_checkpoint(checkpoint_path)
    stored = checkpoint["vlp"]
    experiment = experiment_from_resolved(yaml.safe_load(stored["config"]), [], source=str(checkpoint_path))
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule, tokenizer_json=stored["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    module.eval()
    captioner = captioning_objective(dict(module.objectives))
    transform = getattr(datamodule, "eval_transform", None) or image_transform(data_config(datamodule.image_size), train=False)
    captions: list[str] = []
    for start in range(0, len(image_paths), batch_size):
        images = torch.stack([transform(_read(path)) for path in image_paths[start : start + batch_size]])
        captions += captioner.caption(module.encoder, images, beam_size=beam_size)
    return captions


def _read(path: str):
    try:
        return open_image(path)
    except BadSample as error:
        raise ConfigError(f"Image file {path} cannot be read as an image ({error}); pass PNG, JPEG or other PIL-readable files.") from error
