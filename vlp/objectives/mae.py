"""MAE: reconstruct the pixels of dropped patches with a light decoder (He et al., 2022)."""

from __future__ import annotations

from torch import Tensor

from vlp.encoders.features import Features
from vlp.masked_modeling import masked_patch_loss, masked_positions, patchify, unpatchify
from vlp.objectives.base import Objective
from vlp.heads.patch_decoder import PatchDecoder
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import ImageView, Step
from vlp.views.patch_drop import PatchDrop

CHANNELS = 3


@OBJECTIVES.register("mae")
class MAE(Objective):
    """Masked autoencoding on the image tower, alone or next to a contrastive objective.

    The image tower sees ``1 - mask_ratio`` of the patches (MAE: 75%); the decoder
    (``PatchDecoder``: ``decoder_depth`` timm blocks of ``decoder_width``) predicts the
    pixels of every patch, and the loss is the mean squared error over the dropped patches
    only. Targets are the [0, 1] input pixels, or with ``normalize_targets`` each patch
    normalised by its own mean and variance (MAE's better-representation variant).
    ``image_view`` names another YAML patch-drop view to read instead of its own.
    """

    def __init__(
        self,
        image_width: int,
        patch_size: tuple[int, int] | None,
        patch_grid: tuple[int, int] | None,
        mask_ratio: float = 0.75,
        normalize_targets: bool = True,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        image_view: str | None = None,
    ) -> None:
        super().__init__()
        if patch_grid is None or patch_size is None:
            raise ConfigError("mae needs a ViT image tower with a patch grid (timm ViT, open_clip, hf_clip or hf_siglip).")
        self.patch_size, self.patch_grid = tuple(patch_size), tuple(patch_grid)
        self.normalize_targets = normalize_targets
        self.view = PatchDrop(mask_ratio)
        self.own_view = image_view is None
        self.image_view = f"mae_mask{round(mask_ratio * 100)}" if image_view is None else image_view
        self.decoder = PatchDecoder(
            image_width, self.patch_grid, self.patch_size[0] * self.patch_size[1] * CHANNELS,
            decoder_width, decoder_depth, decoder_heads,
        )

    def image_views(self) -> dict[str, ImageView]:
        return {self.image_view: self.view} if self.own_view else {}

    def targets(self, images: Tensor) -> Tensor:
        if images.shape[1] != CHANNELS:
            raise ConfigError(f"mae reconstructs {CHANNELS}-channel images; the data gives {images.shape[1]} channels.")
        return patchify(images, self.patch_size)

    def predict(self, features: Features) -> Tensor:
        if features.kept is None:
            raise ConfigError(f'mae reads image view "{self.image_view}", which keeps every patch; point it at a patch_drop view.')
        return self.decoder(features.tokens, features.kept)

    def forward(self, step: Step) -> dict[str, Tensor]:
        features = step.image(self.image_view)
        predicted = self.predict(features)
        masked = masked_positions(features.kept, predicted.shape[1])
        return {"loss": masked_patch_loss(predicted, self.targets(step.batch.images), masked, self.normalize_targets)}

    def reconstruct(self, images: Tensor, features: Features) -> tuple[Tensor, Tensor]:
        """(masked input, reconstruction) images for inspection; visible patches are pasted back.

        With normalised targets the prediction is mapped back to pixels with each
        patch's own mean and variance, as in MAE's figures.
        """
        predicted = self.predict(features)
        patches = patchify(images, self.patch_size)
        if self.normalize_targets:
            mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True, unbiased=True)
            predicted = predicted * (var + 1e-6).sqrt() + mean
        masked = masked_positions(features.kept, patches.shape[1]).unsqueeze(-1)
        shown = patches.masked_fill(masked, 0.5)
        rebuilt = predicted.where(masked, patches).clamp(0, 1)
        return unpatchify(shown, self.patch_size, self.patch_grid), unpatchify(rebuilt, self.patch_size, self.patch_grid)
