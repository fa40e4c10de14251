"""LightCLIP's token-level alignment by relaxed bipartite matching of words to patches (Nie et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import relaxed_matching_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.objectives.filip import word_mask
from vlp.registry import OBJECTIVES
from vlp.step import Step


@OBJECTIVES.register("lightclip_token_alignment")
class LightCLIPTokenAlignment(Objective):
    """Contrastive loss on word-to-best-patch similarities of projected tokens.

    Each real word (padding and special tokens dropped) is matched to its most similar
    patch; a pair's score is the mean matched similarity. ``chunk_size`` bounds memory as
    in FILIP. Optional ``sample_weight`` in the batch extras scales each pair's loss.
    """

    def __init__(
        self, chunk_size: int = 64, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
        image_view: str = "full", text_view: str = "full",
    ) -> None:
        super().__init__()
        self.image_view, self.text_view = image_view, text_view
        self.chunk_size = chunk_size
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        scale = self.logit_scale()
        image, text = step.image(self.image_view), step.text(self.text_view)
        loss = relaxed_matching_loss(
            image.token_embeddings, image.mask, text.token_embeddings, word_mask(step, self.text_view), scale,
            self.chunk_size, step.batch.extras.get("sample_weight"), step.batch_sizes(),
        )
        return {"loss": loss, "logit_scale": scale.detach()}
