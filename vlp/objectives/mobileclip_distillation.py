"""MobileCLIP's multi-modal reinforced training (Vasu et al., 2024): CLIP mixed with distillation from stored teachers."""

from __future__ import annotations

from torch import Tensor

from vlp.functional import infonce_loss
from vlp.functional_distillation import affinity_kl
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step

TEACHER_IMAGES = "teacher_image_embeddings"  # (B, T, D): each teacher's embedding of the replayed augmentation
TEACHER_TEXTS = "teacher_text_embeddings"  # (B, T, D): each teacher's embedding of the caption
TEACHER_SCALES = "teacher_logit_scales"  # (B, T): each teacher's logit scale


@OBJECTIVES.register("mobileclip_distillation")
class MobileCLIPDistillation(Objective):
    """(1 − λ) · CLIP + λ · ½ (KL image→text + KL text→image), the KLs averaged over the stored teachers.

    Teacher embeddings come with the batch (``reinforced`` datamodule, written by
    ``tools/reinforce.py``), so training runs no teacher. Each teacher's affinities use its
    own stored logit scale; the student's one learnable scale serves both terms. ``λ`` is
    ``distill_weight`` (MobileCLIP's DataCompDR recipe uses 0.7). Validation batches of
    plain shards carry no teachers: there the loss is the contrastive term alone.
    """

    def __init__(
        self,
        distill_weight: float = 0.7,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        image_view: str = "full",
        text_view: str = "full",
    ) -> None:
        super().__init__()
        if not 0.0 <= distill_weight <= 1.0:
            raise ConfigError(f"mobileclip_distillation distill_weight (λ) must be in [0, 1], got {distill_weight}.")
        self.distill_weight = distill_weight
        self.image_view, self.text_view = image_view, text_view
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)

    def forward(self, step: Step) -> dict[str, Tensor]:
        extras = step.batch.extras
        scale = self.logit_scale()
        images, texts = step.gathered("image", self.image_view), step.gathered("text", self.text_view)
        contrastive = infonce_loss(images, texts, scale, extras.get("sample_weight"))
        if TEACHER_IMAGES not in extras and not self.training:
            return {"loss": contrastive, "contrastive": contrastive.detach(), "logit_scale": scale.detach()}
        if TEACHER_IMAGES not in extras:
            raise ConfigError(
                "mobileclip_distillation reads stored teacher embeddings, which this batch lacks; train on shards "
                "written by tools/reinforce.py with the `reinforced` datamodule."
            )
        teachers = extras[TEACHER_IMAGES].shape[1]
        distill = sum(
            sum(affinity_kl(images, texts, scale, extras[TEACHER_IMAGES][:, t], extras[TEACHER_TEXTS][:, t],
                            extras[TEACHER_SCALES][0, t], extras.get("sample_weight"))) / 2
            for t in range(teachers)
        ) / teachers
        loss = (1 - self.distill_weight) * contrastive + self.distill_weight * distill
        return {"loss": loss, "contrastive": contrastive.detach(), "distillation": distill.detach(), "logit_scale": scale.detach()}
