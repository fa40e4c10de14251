"""Use a trained model from Python: ``model, preprocess, tokenizer = vlp.load(PATH)``.

As open_clip's ``create_model_and_transforms`` and LAVIS's ``load_model_and_preprocess``:
``PATH`` is a checkpoint written by ``vlp fit`` or a directory written by ``vlp export``;
the training data need not be present. ``model.encode_image(preprocess(pil)[None])`` and
``model.encode_text(["a red circle"])`` give L2-normalised embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from vlp.data.transforms import data_config, image_transform
from vlp.model import DualEncoder
from vlp.registry import ConfigError

DEFAULT_IMAGE_SIZE = 224


def load(path: str | Path, device: str | torch.device | None = None) -> tuple[DualEncoder, Callable[[Image.Image], torch.Tensor], Any]:
    """The dual encoder (eval mode, adapters merged), a PIL-image preprocess and the text tokenizer.

    ``device`` defaults to CUDA when available. ``preprocess`` resizes and centre-crops to
    the size the model was trained at and returns a float tensor (3, H, W) in [0, 1]
    (towers normalise by themselves); ``tokenizer`` is the text tower's transformers tokenizer.
    """
    from vlp.export import exported_experiment, load_exported, restore

    path = Path(path)
    if path.is_dir():
        module = load_exported(path)
        config = exported_experiment(path).resolved
    elif path.is_file():
        module, config = restore(path)
    else:
        raise ConfigError(f"{path} does not exist; pass a .ckpt written by vlp fit or a directory written by vlp export.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = module.encoder.to(device).eval()
    return encoder, preprocess_for(config), encoder.text_tower.tokenizer


def preprocess_for(config: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform of the model's training data: its image size, the timm tower's interpolation and crop."""
    data, image = config.get("data", {}), config["model"]["image_encoder"]
    kwargs = image.get("model_kwargs") or {}
    size = data.get("image_size") or kwargs.get("img_size") or DEFAULT_IMAGE_SIZE
    timm_name = data.get("image_encoder") or None
    transform = image_transform(data_config(int(size), timm_name, data.get("image_encoder_kwargs") if timm_name else None), train=False)

    def preprocess(image: Image.Image):
        return transform(image.convert("RGB"))

    return preprocess
