"""Frozen teacher dual encoders for distillation, built from registered towers like the student's."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.config.schema import check_values
from vlp.registry import IMAGE_ENCODERS, TEXT_ENCODERS, ConfigError


def build_teacher(image_encoder: dict[str, Any], text_encoder: dict[str, Any], embed_dim: int, path: str) -> Any:
    """A ``DualEncoder`` from two tower configs (``{name: hf_clip, pretrained: DIR}``, ...), validated like the model's."""
    from vlp.model import DualEncoder

    towers = []
    for kind, values, registry in (("image_encoder", image_encoder, IMAGE_ENCODERS), ("text_encoder", text_encoder, TEXT_ENCODERS)):
        key_path = f"{path}.teacher_{kind}"
        if not isinstance(values, dict) or "name" not in values:
            raise ConfigError(f"`{key_path}` must be a mapping with a `name` key choosing the {registry.kind}, e.g. {{name: hf_clip, pretrained: DIR}}.")
        params = dict(values)
        cls = registry.get(str(params.pop("name")), where=f"`{key_path}.name`")
        check_values(params, cls, key_path, lambda _: "the teacher config", injected=("embed_dim", "default_tokenizer"))
        towers.append(instantiate_tower(cls, params, embed_dim))
    return DualEncoder(*towers)


def instantiate_tower(cls: type, params: dict[str, Any], embed_dim: int) -> Any:
    """A tower with the builder's injected arguments; a teacher has no training captions to build a vocabulary from."""

    def no_corpus_tokenizer() -> Any:
        raise ConfigError("A teacher's text tower needs a tokenizer of its own: give it `pretrained` (or `tokenizer`), a local model directory.")

    injected = {"embed_dim": embed_dim, "default_tokenizer": no_corpus_tokenizer}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**params, **{k: v for k, v in injected.items() if k in accepted})


def image_size_of(tower: Any) -> tuple[int, int] | None:
    """The input size a ViT tower was built for (None when the tower takes any size)."""
    if getattr(tower, "patch_grid", None) is None:
        return None
    return tower.patch_grid[0] * tower.patch_size[0], tower.patch_grid[1] * tower.patch_size[1]


@torch.no_grad()
def teacher_embeddings(teacher: Any, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
    """The teacher's image and text embeddings (not normalised), images resized to its input size if needed."""
    size = image_size_of(teacher.image_tower)
    if size is not None and tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    ids, mask = teacher.text_tower.tokenize(texts)
    device = images.device
    return teacher.image_tower(images).embedding, teacher.text_tower(ids.to(device), mask.to(device)).embedding
