"""Long-CLIP (Zhang et al., 2024): fine-grained matching with long captions, primary-component matching with short ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.encoders.pretrained_scales import read_scales
from vlp.functional import Embeddings, gathered, weighted_mean
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step
from vlp.views.first_sentence import FirstSentence

SHORT_VIEW = "first_sentence"


def primary_components(features: Tensor, components: int) -> Tensor:
    """``features`` (N, D) projected onto their top ``components`` principal directions and back, mean kept.

    Long-CLIP's coarse image feature: the PCA reconstruction from the leading singular
    vectors of the centred batch (computed in float32 or wider, by SVD).
    """
    wide = features.to(torch.promote_types(features.dtype, torch.float32))
    mean = wide.mean(0, keepdim=True)
    centred = wide - mean
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:components].T
    return centred @ basis @ basis.T + mean


def smoothed_infonce(images_local: Tensor, images_all: Tensor, texts_local: Tensor, texts_all: Tensor, labels: Tensor,
                     scale: Tensor, smoothing: float, sizes: tuple[int, ...]) -> Tensor:
    """Symmetric InfoNCE over the global batch with label smoothing, for this rank's rows."""
    image_to_text = F.cross_entropy(scale * images_local @ texts_all.T, labels, label_smoothing=smoothing, reduction="none")
    text_to_image = F.cross_entropy(scale * texts_local @ images_all.T, labels, label_smoothing=smoothing, reduction="none")
    return weighted_mean((image_to_text + text_to_image) / 2, None, sizes)


def long_clip_losses(images: Embeddings, long_texts: Embeddings, short_texts: Embeddings, scale: Tensor, components: int,
                     smoothing: float) -> tuple[Tensor, Tensor]:
    """(fine-grained loss, primary-component loss) over the global batch, for this rank's rows."""
    images, long_texts, short_texts = gathered(images, long_texts, short_texts)
    labels = images.labels()
    long_loss = smoothed_infonce(images.local, images.all, long_texts.local, long_texts.all, labels, scale, smoothing, images.sizes)
    coarse_all = primary_components(images.all, components)
    coarse_local = coarse_all[images.offset : images.offset + images.local.shape[0]]
    short_loss = smoothed_infonce(coarse_local, coarse_all, short_texts.local, short_texts.all, labels, scale, smoothing, images.sizes)
    return long_loss, short_loss


@OBJECTIVES.register("long_clip")
class LongCLIP(Objective):
    """Long captions against the image embedding, plus ``short_weight`` × short captions against its primary components.

    The long caption is ``text_view`` (the caption as given; stretch the text tower with
    ``long_text: true`` so it is not cut at 77 tokens); the short one is ``short_view``,
    by default its first sentence. The image embedding (L2-normalised) is reduced to its
    top ``components`` principal components over the global batch for the short match.
    Defaults follow the official training script: 32 components, short weight 0.1, label
    smoothing 0.1, one learnable temperature (``init_from`` reads a pretrained one).
    The PCA runs over the gathered global batch (the official code uses each GPU's
    batch), so a multi-process run equals the single-process one.
    """

    def __init__(
        self,
        components: int = 32,
        short_weight: float = 0.1,
        label_smoothing: float = 0.1,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        init_from: str | None = None,
        image_view: str = "full",
        text_view: str = "full",
        short_view: str = SHORT_VIEW,
    ) -> None:
        super().__init__()
        if components < 1 or not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"long_clip needs components >= 1 and label_smoothing in [0, 1), got {components} and {label_smoothing}.")
        self.components, self.short_weight, self.label_smoothing = components, short_weight, label_smoothing
        self.image_view, self.text_view, self.short_view = image_view, text_view, short_view
        pretrained = read_scales(init_from).log_logit_scale if init_from else None
        self.logit_scale = LogitScale(init_temperature, max_logit_scale, True, pretrained)

    def text_views(self) -> dict:
        return {SHORT_VIEW: FirstSentence()}

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        long_loss, short_loss = long_clip_losses(
            step.gathered("image", self.image_view), step.gathered("text", self.text_view),
            step.gathered("text", self.short_view), scale, self.components, self.label_smoothing,
        )
        return {"loss": long_loss + self.short_weight * short_loss, "long": long_loss.detach(), "short": short_loss.detach(),
                "logit_scale": scale.detach()}
