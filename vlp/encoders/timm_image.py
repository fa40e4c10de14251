"""Image towers from timm: any timm model by name, with its own constructor arguments."""

from __future__ import annotations

from typing import Any, Callable

import timm
import torch
from torch import Tensor

from vlp.config.checks import check_timm_kwargs
from vlp.encoders.patch_tokens import timm_vit_patches
from vlp.encoders.memory import configure_backbone
from vlp.encoders.towers import Tower
from vlp.encoders.weights import load_into, read_state_dict
from vlp.registry import IMAGE_ENCODERS, ConfigError

HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.")


@IMAGE_ENCODERS.register("timm")
class TimmImageEncoder(Tower):
    """A timm backbone (classifier removed) returning pooled features and patch tokens.

    Images arrive as floats in [0, 1]; the tower normalises them with the mean and std
    of the model's own pretrained config, so data pipelines need not know the encoder.
    """

    def __init__(
        self,
        embed_dim: int,
        model_name: str,
        model_kwargs: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        kwargs = dict(model_kwargs or {})
        if not timm.is_model(model_name.split(".")[0]):
            close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
            raise ConfigError(
                f'timm has no model "{model_name}"; pick one of timm.list_models() '
                f"(similar: {', '.join(close) or 'none'})."
            )
        _check_patch_fit(model_name, kwargs)
        try:
            backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as error:
            raise ConfigError(
                f'timm model "{model_name}" rejected model_kwargs {sorted(kwargs)} ({error}); '
                f"remove or rename the offending argument."
            ) from error
        super().__init__(backbone.num_features, embed_dim)
        self.backbone = backbone
        if checkpoint is not None:
            load_into(backbone, read_state_dict(checkpoint), checkpoint, ignore_prefixes=HEAD_PREFIXES)
            self.pretrained_parts = ("backbone.",)
        cfg = backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, -1, 1, 1), persistent=False)
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        configure_backbone(backbone, grad_checkpointing, compile, "image")
        patch_embed = getattr(backbone, "patch_embed", None)
        if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
            self.patch_size, self.patch_grid = tuple(patch_embed.patch_size), tuple(patch_embed.grid_size)

    @staticmethod
    def validate_params(params: dict[str, Any], path: str, where: Callable[[str], str]) -> None:
        """Check ``model_kwargs`` against the model's constructor before anything is built."""
        check_timm_kwargs(params.get("model_name"), params.get("model_kwargs"), f"{path}.model_kwargs", where)

    def backbone_features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.backbone.forward_features((images - self.mean) / self.std)
        pooled = self.backbone.forward_head(hidden, pre_logits=True)
        if hidden.ndim == 4:  # CNN feature map (B, C, H, W) -> tokens (B, H*W, C)
            tokens = hidden.flatten(2).transpose(1, 2)
        else:
            tokens = hidden[:, self.num_prefix_tokens :]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return pooled, tokens, mask

    def patch_features(self, images, keep, drop_positions, layers):
        return timm_vit_patches(self.backbone, (images - self.mean) / self.std, keep, drop_positions, layers)


def _check_patch_fit(model_name: str, kwargs: dict[str, Any]) -> None:
    """Fail early when a ViT's image size is not a multiple of its patch size."""
    img_size, patch_size = kwargs.get("img_size"), kwargs.get("patch_size")
    if img_size is None or patch_size is None:
        return
    sizes = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
    if any(int(s) % int(patch_size) for s in sizes):
        raise ConfigError(
            f'Image size {img_size} of timm model "{model_name}" is not a multiple of its patch '
            f"size {patch_size}; choose an img_size divisible by patch_size."
        )
