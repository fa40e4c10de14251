"""CFM-ViT: masked feature reconstruction in the joint image-text space (Kim et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from vlp.masked_modeling import feature_reconstruction_loss, masked_positions
from vlp.objectives.base import Objective
from vlp.heads.patch_decoder import PatchDecoder
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import ImageView, Step
from vlp.views.patch_drop import PatchDrop


@OBJECTIVES.register("cfm_vit")
class ContrastiveFeatureMasking(Objective):
    """Reconstruct the joint-space features of dropped patches; add ``clip`` for the contrastive term.

    The image tower runs on ``1 - mask_ratio`` of the patches, and with probability
    ``position_dropout`` per image without positional embeddings (Positional Embedding
    Dropout, PED). A light decoder predicts every patch's token in the joint space; the
    targets are the unmasked image's (``target_view``) tokens passed through the image
    projection, without gradient. The loss is 1 - cosine over the dropped patches.
    """

    def __init__(
        self,
        image_width: int,
        embed_dim: int,
        patch_grid: tuple[int, int] | None,
        mask_ratio: float = 0.75,
        position_dropout: float = 0.5,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        image_view: str | None = None,
        target_view: str = "full",
    ) -> None:
        super().__init__()
        if patch_grid is None:
            raise ConfigError("cfm_vit needs a ViT image tower with a patch grid (timm ViT, open_clip, hf_clip or hf_siglip).")
        self.view = PatchDrop(mask_ratio, position_dropout)
        self.own_view = image_view is None
        default_name = f"cfm_mask{round(mask_ratio * 100)}_ped{round(position_dropout * 100)}"
        self.image_view = default_name if image_view is None else image_view
        self.target_view = target_view
        self.decoder = PatchDecoder(image_width, tuple(patch_grid), embed_dim, decoder_width, decoder_depth, decoder_heads)

    def image_views(self) -> dict[str, ImageView]:
        return {self.image_view: self.view} if self.own_view else {}

    def forward(self, step: Step) -> dict[str, Tensor]:
        masked_view, full = step.image(self.image_view), step.image(self.target_view)
        if masked_view.kept is None or full.kept is not None:
            raise ConfigError(
                f'cfm_vit needs a patch-dropped image_view and an unmasked target_view; got "{self.image_view}" and "{self.target_view}".'
            )
        predicted = self.decoder(masked_view.tokens, masked_view.kept)
        targets = full.token_embeddings.detach()
        masked = masked_positions(masked_view.kept, predicted.shape[1])
        return {"loss": feature_reconstruction_loss(predicted, targets, masked)}
