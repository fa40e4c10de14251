"""What the built model tells objectives before optimizers exist: widths, vocabulary, special ids, patch grid.

An objective (or evaluation) declares what it needs by naming it as a constructor
parameter; the builder passes the value (these names are not YAML keys). Modules built
from them in ``__init__`` (a caption decoder, an MLM head, an MAE decoder, a teacher) are
attributes of the objective, so they train, shard, checkpoint, resume and export with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import nn


@dataclass(frozen=True)
class SpecialTokens:
    """The text tokenizer's special ids (None where the tokenizer has no such token)."""

    pad: int | None
    bos: int | None
    eos: int | None
    mask: int | None
    cls: int | None
    sep: int | None
    unk: int | None
    all: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Any) -> "SpecialTokens":
        return cls(
            pad=tokenizer.pad_token_id, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
            mask=tokenizer.mask_token_id, cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id,
            unk=tokenizer.unk_token_id, all=tuple(sorted(set(tokenizer.all_special_ids))),
        )


@dataclass(frozen=True)
class ModelInfo:
    """Every value an objective may declare as a constructor parameter, by field name.

    ``vocab_size``: ids the text tower's embedding accepts (every tokenizer id is below it).
    ``patch_size`` / ``patch_grid`` / ``image_size``: (height, width) of a patch, the patch
    grid and the input image of a ViT image tower (None for other towers).
    ``num_prefix_tokens``: class/register tokens before the patches.
    ``encoder``: the ``DualEncoder`` itself, for teachers (copy it; never keep training it).
    """

    embed_dim: int
    image_width: int
    text_width: int
    vocab_size: int
    special_tokens: SpecialTokens
    max_text_length: int
    patch_size: tuple[int, int] | None
    patch_grid: tuple[int, int] | None
    image_size: tuple[int, int] | None
    num_prefix_tokens: int
    tokenizer: Any
    encoder: nn.Module

    @classmethod
    def of(cls, encoder: nn.Module, embed_dim: int) -> "ModelInfo":
        image, text = encoder.image_tower, encoder.text_tower
        config = getattr(getattr(text, "backbone", None), "config", None)
        vocab = max(len(text.tokenizer), getattr(config, "vocab_size", 0) or 0)
        grid, patch = image.patch_grid, image.patch_size
        return cls(
            embed_dim=embed_dim, image_width=image.width, text_width=text.width, vocab_size=vocab,
            special_tokens=SpecialTokens.of(text.tokenizer), max_text_length=text.max_length,
            patch_size=patch, patch_grid=grid,
            image_size=None if grid is None else (grid[0] * patch[0], grid[1] * patch[1]),
            num_prefix_tokens=image.num_prefix_tokens, tokenizer=text.tokenizer, encoder=encoder,
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Objective constructor parameters filled by the builder, never read from YAML.
OBJECTIVE_INJECTED = tuple(f.name for f in fields(ModelInfo))
