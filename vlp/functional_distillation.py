"""Distillation losses between a student's and a teacher's image-text similarity distributions.

Inputs are per-rank, as in :mod:`vlp.functional`: each rank scores its own rows against
the gathered global batch, so the mean over ranks equals the single-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.functional import Embeddings, gathered, weighted_mean


def _wide(tensor: Tensor) -> Tensor:
    """At least float32, whatever the autocast dtype: softmaxes and losses are never computed in 16 bits."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _row_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(softmax(teacher) || softmax(student)) per row."""
    teacher_log_p = F.log_softmax(_wide(teacher_logits), dim=-1)
    student_log_p = F.log_softmax(_wide(student_logits), dim=-1)
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(-1)


def affinity_kl(
    student_images: Embeddings,
    student_texts: Embeddings,
    student_scale: Tensor,
    teacher_images: Tensor,
    teacher_texts: Tensor,
    teacher_scale: Tensor | float,
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Image-to-text and text-to-image KL between teacher and student affinities (TinyCLIP, MobileCLIP).

    Affinities are softmax(scale · cosine similarity) over the global batch; each model
    uses its own scale. The teacher receives no gradient. Returns (image→text, text→image),
    each the global mean over rows of KL(teacher row || student row). Student embeddings
    may be a step's shared ``Gathered`` views.
    """
    images, texts = gathered(student_images, student_texts)
    with torch.no_grad():
        t_images, t_texts = gathered(teacher_images.detach(), teacher_texts.detach())
        teacher_i2t = teacher_scale * t_images.local @ t_texts.all.T
        teacher_t2i = teacher_scale * t_texts.local @ t_images.all.T
    image_to_text = _row_kl(teacher_i2t, student_scale * images.local @ texts.all.T)
    text_to_image = _row_kl(teacher_t2i, student_scale * texts.local @ images.all.T)
    return weighted_mean(image_to_text, sample_weight, images.sizes), weighted_mean(text_to_image, sample_weight, images.sizes)


def self_distillation_loss(
    student_logits: list[Tensor],
    teacher_logits: list[Tensor],
    center: Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> Tensor:
    """DINO's cross-view loss, as SILC uses it: every student view predicts every teacher view.

    The teacher's distribution is centred (``center`` subtracted) and sharpened (a low
    ``teacher_temperature``) and carries no gradient; the loss is the cross-entropy
    −Σ p_teacher · log p_student averaged over (teacher view, student view) pairs and
    over the global batch. SILC's student sees only local crops, so no pair is skipped.
    """
    targets = [F.softmax((_wide(t.detach()) - center) / teacher_temperature, dim=-1) for t in teacher_logits]
    log_predictions = [F.log_softmax(_wide(s) / student_temperature, dim=-1) for s in student_logits]
    pairs = [-(target * log_p).sum(-1) for target in targets for log_p in log_predictions]
    return weighted_mean(torch.stack(pairs).mean(0), None)


@torch.no_grad()
def updated_center(center: Tensor, teacher_logits: list[Tensor], momentum: float) -> Tensor:
    """DINO's centre: an exponential moving average of the teacher's mean output over the global batch."""
    outputs = torch.cat([_wide(t) for t in teacher_logits])
    total, count = outputs.sum(0), torch.tensor(float(outputs.shape[0]), device=outputs.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(count)
    return center * momentum + (total / count) * (1 - momentum)
