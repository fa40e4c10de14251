"""SILC: local-to-global self-distillation from an EMA teacher (Naeem et al., 2023), beside a contrastive loss."""

from __future__ import annotations

import math

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import Tensor, nn

from vlp.data.multi_crop import GLOBAL_CROPS, LOCAL_CROPS
from vlp.functional_distillation import self_distillation_loss, updated_center
from vlp.heads.dino import DINOHead
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step
from vlp.views.crops import Crops, crop_major

LOCAL_VIEW = "silc_local_crops"


@OBJECTIVES.register("silc")
class SILCSelfDistillation(Objective):
    """The student image tower sees the batch's local crops, an EMA teacher its global crops.

    The crops come from the datamodule (``data.multi_crop``, :mod:`vlp.data.multi_crop`):
    cut from the source image, the global ones at the tower's input size, the local ones
    smaller (a ViT tower then needs ``model_kwargs.dynamic_img_size: true``). Both map
    the tower's pooled feature through a DINO head; the student predicts the teacher's
    centred, sharpened distribution for every (global, local) pair
    (:func:`~vlp.functional_distillation.self_distillation_loss`). The teacher (image tower
    and head) is timm's ``ModelEmaV3`` of the student, updated once per optimizer step with
    momentum rising from ``momentum`` to 1 on a cosine over training; its temperature warms
    up linearly from ``warmup_teacher_temperature`` over the first ``teacher_warmup`` of
    training. Defaults are DINO's (SILC builds on it); pair it with ``clip`` or ``siglip``.
    """

    def __init__(
        self,
        image_width: int,
        encoder: nn.Module,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.07,
        warmup_teacher_temperature: float = 0.04,
        teacher_warmup: float = 0.3,
        momentum: float = 0.996,
        center_momentum: float = 0.9,
        image_view: str = LOCAL_VIEW,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0 or not 0.0 <= center_momentum < 1.0:
            raise ConfigError(f"silc momentum and center_momentum must be in [0, 1), got {momentum} and {center_momentum}.")
        self.image_view = image_view
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.warmup_teacher_temperature, self.teacher_warmup = warmup_teacher_temperature, teacher_warmup
        self.momentum, self.center_momentum = momentum, center_momentum
        self.head = DINOHead(image_width, out_dim, hidden_dim, bottleneck_dim)
        self.hold_frozen("teacher", ModelEmaV3(self._student(encoder)), reloaded=False)
        self.register_buffer("center", torch.zeros(out_dim))
        self.progress = 0.0

    def image_views(self) -> dict:
        return {LOCAL_VIEW: Crops(LOCAL_CROPS)}

    def _student(self, encoder: nn.Module) -> nn.ModuleDict:
        return nn.ModuleDict({"tower": encoder.image_tower, "head": self.head})

    def teacher_temperature_at(self, progress: float) -> float:
        if progress >= self.teacher_warmup:
            return self.teacher_temperature
        return self.warmup_teacher_temperature + (self.teacher_temperature - self.warmup_teacher_temperature) * progress / self.teacher_warmup

    def momentum_at(self, progress: float) -> float:
        """DINO's schedule: ``momentum`` at the start, 1 at the end, on a half cosine."""
        return 1.0 - (1.0 - self.momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def forward(self, step: Step) -> dict[str, Tensor]:
        self.progress = step.progress
        global_crops = crop_major(step.batch, GLOBAL_CROPS)  # (G·B, C, H, W)
        local = step.image(self.image_view).pooled  # (L·B, width), crop-major
        students = self.head(local).chunk(len(local) // len(step.batch))
        with torch.no_grad():
            teacher = self.teacher.module
            teachers = teacher["head"](teacher["tower"](global_crops).pooled).chunk(len(global_crops) // len(step.batch))
        temperature = self.teacher_temperature_at(step.progress)
        loss = self_distillation_loss(list(students), list(teachers), self.center, self.student_temperature, temperature)
        if self.training:
            self.center.copy_(updated_center(self.center, list(teachers), self.center_momentum))
        return {"loss": loss, "teacher_temperature": torch.tensor(temperature, device=loss.device)}

    @torch.no_grad()
    def after_optimizer_step(self, encoder: nn.Module) -> None:
        student = self._student(encoder)
        if list(student.state_dict()) != list(self.teacher.module.state_dict()):
            raise ConfigError(
                "silc's EMA teacher no longer matches the student image tower (LoRA or locking changed its weights' names); "
                "train the image tower fully (model.tuning.image.mode: full) with silc."
            )
        self.teacher.apply_update_(student, self.momentum_at(self.progress))
