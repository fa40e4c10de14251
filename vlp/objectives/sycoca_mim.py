"""SyCoCa's text-guided masked image modelling with attentive masking (Ma et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.heads.patch_decoder import TextGuidedPatchDecoder
from vlp.masked_modeling import masked_patch_loss, patchify, text_guided_keep_indices
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step
from vlp.views.patch_drop import kept_count


@OBJECTIVES.register("sycoca_mim")
class SyCoCaMaskedImageModeling(Objective):
    """Rebuild the patches the text does not point at, from the ones it does and from the text.

    Attentive masking: the caption's embedding attends over the image's projected patch
    tokens (``image_view``, the full image, no gradient through the choice); the
    ``1 - mask_ratio`` patches it attends to most are kept and the image tower runs on them
    alone. A light MAE-style decoder puts a learned [MASK] token at every other grid
    position, adds fixed 2-D sin-cos positions, and alternates self-attention over the
    patches with cross-attention to the caption's tokens (``text_view``); a linear layer
    predicts each patch's pixels. The loss is MAE's mean squared error over the hidden
    patches of the global batch, on pixels in [0, 1] or, with ``normalize_target``, on
    each patch standardised by its own mean and variance (MAE's ``norm_pix_loss``).
    ``image_channels`` must match the images the datamodule produces.
    """

    def __init__(
        self,
        image_width: int,
        text_width: int,
        patch_size: tuple[int, int] | None,
        patch_grid: tuple[int, int] | None,
        mask_ratio: float = 0.5,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        normalize_target: bool = False,
        image_channels: int = 3,
        image_view: str = "full",
        text_view: str = "full",
    ) -> None:
        super().__init__()
        if patch_grid is None or patch_size is None:
            raise ConfigError("sycoca_mim masks image patches, so it needs a ViT image tower (timm ViT, open_clip, hf_clip or hf_siglip).")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"sycoca_mim mask_ratio must be in (0, 1), got {mask_ratio}; it is the fraction of patches hidden.")
        self.image_view, self.text_view = image_view, text_view
        self.patch_size, self.image_channels = tuple(patch_size), image_channels
        self.keep = kept_count(patch_grid[0] * patch_grid[1], mask_ratio)
        self.normalize_target = normalize_target
        patch_pixels = self.patch_size[0] * self.patch_size[1] * image_channels
        self.decoder = TextGuidedPatchDecoder(
            image_width, text_width, tuple(patch_grid), patch_pixels, decoder_width, decoder_depth, decoder_heads
        )

    def forward(self, step: Step) -> dict[str, Tensor]:
        prediction, target, hidden = self.reconstruct(step)
        return {"loss": masked_patch_loss(prediction, target, hidden, self.normalize_target)}

    def reconstruct(self, step: Step) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted pixels (B, N, P) of every patch, the true pixels (B, N, P), and the hidden patches (B, N)."""
        image, text = step.image(self.image_view), step.text(self.text_view)
        if image.kept is not None:
            raise ConfigError(f'sycoca_mim chooses patches among all of them; image_view "{self.image_view}" already dropped some.')
        images = step.batch.images
        if images.shape[1] != self.image_channels:
            raise ConfigError(f"sycoca_mim has image_channels {self.image_channels} but the images have {images.shape[1]}; set image_channels.")
        keep = text_guided_keep_indices(
            F.normalize(text.embedding.detach(), dim=-1), F.normalize(image.token_embeddings.detach(), dim=-1), self.keep
        )
        visible = step.encoder.image_tower.forward_patches(images, keep=keep)
        prediction = self.decoder(visible.tokens, keep, text.tokens, text.mask)
        hidden = torch.ones(prediction.shape[:2], dtype=torch.bool, device=prediction.device).scatter(1, keep, False)
        return prediction, patchify(images, self.patch_size), hidden
