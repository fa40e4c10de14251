"""FILIP: token-wise late interaction for contrastive pre-training (Yao et al., 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.functional import filip_loss
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES
from vlp.step import Step


def word_mask(step: Step, view: str = "full") -> Tensor:
    """Real, non-special text tokens of a text view: FILIP drops padding and [BOS]/[EOS]-like tokens."""
    text = step.text(view)
    ids = text.input_ids if text.input_ids is not None else step.batch.input_ids
    special = torch.tensor(step.encoder.text_tower.tokenizer.all_special_ids, device=ids.device)
    return text.mask & ~torch.isin(ids, special)


@OBJECTIVES.register("filip")
class FILIP(Objective):
    """Contrastive loss on token-wise max-mean similarities of projected patch and word tokens.

    ``chunk_size`` bounds memory: at most chunk_size^2 x patches x words similarities
    exist at once. Optional ``sample_weight`` in the batch extras scales each pair's loss.
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
        loss = filip_loss(
            image.token_embeddings, image.mask, text.token_embeddings, word_mask(step, self.text_view), scale,
            self.chunk_size, step.batch.extras.get("sample_weight"), step.batch_sizes(),
        )
        return {"loss": loss, "logit_scale": scale.detach()}
