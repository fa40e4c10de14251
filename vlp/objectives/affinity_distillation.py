"""Online distillation from a frozen teacher dual encoder by affinity mimicking (TinyCLIP, Wu et al., 2023)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vlp.data.base import TEXTS_KEY
from vlp.functional_distillation import affinity_kl
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step
from vlp.teachers import build_teacher, teacher_embeddings


def _load_teacher(path: str | None, image_encoder: dict | None, text_encoder: dict | None, embed_dim: int | None) -> nn.Module:
    """A teacher from a vlp checkpoint/export, or from two tower configs; exactly one of the two forms."""
    towers = (image_encoder, text_encoder, embed_dim)
    from_path = path is not None and all(t is None for t in towers)
    from_towers = path is None and all(t is not None for t in towers)
    if not (from_path or from_towers):
        raise ConfigError(
            "affinity_distillation needs either `teacher: PATH` (a vlp checkpoint or export) or all of "
            "teacher_image_encoder, teacher_text_encoder and teacher_embed_dim, not both."
        )
    if path is not None:
        from vlp.api import load

        return load(path, device="cpu")[0]
    return build_teacher(image_encoder, text_encoder, embed_dim, "affinity_distillation")


@OBJECTIVES.register("affinity_distillation")
class AffinityDistillation(Objective):
    """KL from the teacher's to the student's image→text and text→image affinities, summed (TinyCLIP).

    The teacher is a vlp checkpoint or export (``teacher: PATH``, loaded by ``vlp.load``),
    or any pair of registered towers with local weights (``hf_clip``, ``open_clip``,
    ``timm`` + ``transformers`` ...) given as ``teacher_image_encoder`` /
    ``teacher_text_encoder`` with its projection width ``teacher_embed_dim``. It is frozen,
    in eval mode, left out of checkpoints and rebuilt from its files. It tokenizes the raw
    captions with its own tokenizer and sees the images resized to its input size.
    Affinities are softmax(scale · cosine) over the global batch: the teacher's scale is
    ``teacher_logit_scale`` (CLIP's trained value, 100), the student's is learned here.
    """

    def __init__(
        self,
        teacher: str | None = None,
        teacher_image_encoder: dict[str, Any] | None = None,
        teacher_text_encoder: dict[str, Any] | None = None,
        teacher_embed_dim: int | None = None,
        teacher_logit_scale: float = 100.0,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        image_view: str = "full",
        text_view: str = "full",
    ) -> None:
        super().__init__()
        if teacher_logit_scale <= 0:
            raise ConfigError(f"affinity_distillation teacher_logit_scale must be positive, got {teacher_logit_scale}.")
        self.image_view, self.text_view = image_view, text_view
        self.teacher_logit_scale = teacher_logit_scale
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)
        self.hold_frozen("teacher", _load_teacher(teacher, teacher_image_encoder, teacher_text_encoder, teacher_embed_dim), reloaded=True)

    def forward(self, step: Step) -> dict[str, Tensor]:
        teacher_images, teacher_texts = teacher_embeddings(self.teacher, step.batch.images, step.batch.extras[TEXTS_KEY])
        scale = self.logit_scale()
        image_to_text, text_to_image = affinity_kl(
            step.gathered("image", self.image_view), step.gathered("text", self.text_view), scale,
            teacher_images, teacher_texts, self.teacher_logit_scale, step.batch.extras.get("sample_weight"),
        )
        return {"loss": image_to_text + text_to_image, "image_to_text": image_to_text.detach(),
                "text_to_image": text_to_image.detach(), "logit_scale": scale.detach()}
