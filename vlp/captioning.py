"""``vlp caption``: caption image files with a checkpoint whose objectives include a caption decoder.

``tools/reinforce.py`` writes its synthetic captions through :func:`load_captioner` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

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


class Captioner(NamedTuple):
    """A checkpoint's caption decoder with what it runs on: the model, and its validation image transform."""

    module: torch.nn.Module
    objective: torch.nn.Module
    transform: Callable

    def captions(self, images: list, count: int = 1, beam_size: int = 1) -> list[list[str]]:
        """The ``count`` best captions of each PIL image, best first (see ``CoCa.captions``)."""
        pixels = torch.stack([self.transform(image) for image in images])
        return self.objective.captions(self.module.encoder, pixels, count, beam_size)


def load_captioner(checkpoint_path: str) -> Captioner:
    """A ``vlp fit`` checkpoint rebuilt in eval mode; a ConfigError if none of its objectives captions."""
    checkpoint = load_vlp_checkpoint(checkpoint_path)
    stored = checkpoint["vlp"]
    experiment = experiment_from_resolved(yaml.safe_load(stored["config"]), [], source=str(checkpoint_path))
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule, tokenizer_json=stored["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    module.eval()
    objective = captioning_objective(dict(module.objectives))
    transform = getattr(datamodule, "eval_transform", None) or image_transform(data_config(datamodule.image_size), train=False)
    return Captioner(module, objective, transform)


def caption_files(checkpoint_path: str, image_paths: list[str], beam_size: int = 1, batch_size: int = 32,
                  count: int = 1) -> list[list[str]]:
    """The ``count`` best captions per image file, prepared as the checkpoint's validation images are."""
    if beam_size < 1:
        raise ConfigError(f"--beam {beam_size} is not a beam width; use 1 (greedy search) or more.")
    if count < 1:
        raise ConfigError(f"--captions {count} is not a number of captions; use 1 or more.")
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"Image file {missing[0]} does not exist; pass paths of existing image files.")
    captioner = load_captioner(checkpoint_path)
    captions: list[list[str]] = []
    for start in range(0, len(image_paths), batch_size):
        captions += captioner.captions([_read(path) for path in image_paths[start : start + batch_size]], count, beam_size)
    return captions


def _read(path: str):
    try:
        return open_image(path)
    except BadSample as error:
        raise ConfigError(f"Image file {path} cannot be read as an image ({error}); pass PNG, JPEG or other PIL-readable files.") from error
