"""SILC: the EMA teacher follows the closed-form EMA, never trains, stays in eval mode, and resumes exactly."""

from __future__ import annotations

import math

import torch

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.optim import build_optimizer
from vlp.run import load_vlp_checkpoint
from vlp.views.random_crops import random_resized_crops

from conftest import REPO, TINY_OVERRIDES, run_vlp

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
SILC = "model.objectives=[{name: clip}, {name: silc, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2}]"
# experiments/silc.yaml shrunk to the same head, as a command-line override of its second objective.
SMALL_SILC_YAML = ["model.objectives.1.out_dim=64", "model.objectives.1.hidden_dim=32", "model.objectives.1.bottleneck_dim=16",
                   "model.objectives.1.local_crops=2"]


def build(overrides: list[str]):
    experiment = load_experiment(EXPERIMENT, TINY_OVERRIDES + overrides)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    return build_module(experiment, datamodule), datamodule


def test_teacher_is_the_closed_form_ema_of_the_student_history():
    module, _ = build([SILC])
    silc = module.objectives["silc"]
    student = silc._student(module.encoder)
    names = list(student.state_dict())
    expected = {k: v.double().clone() for k, v in student.state_dict().items()}
    torch.manual_seed(0)
    for step, progress in enumerate([0.0, 0.25, 0.5, 0.9]):
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        silc.progress = progress
        silc.after_optimizer_step(module.encoder)
        m = 1 - (1 - 0.996) * (math.cos(math.pi * progress) + 1) / 2  # DINO's cosine schedule
        for name, value in student.state_dict().items():
            if value.is_floating_point():
                expected[name] = m * expected[name] + (1 - m) * value.double()
    teacher = silc.teacher.module.state_dict()
    assert list(teacher) == names
    for name in names:
        torch.testing.assert_close(teacher[name].double(), expected[name], rtol=0, atol=1e-6)


def test_teacher_never_trains_stays_in_eval_and_resumes_exactly(tmp_path):
    """`vlp fit experiments/silc.yaml` (tiny), then its checkpoint is read back into a model built in this process."""
    run_dir = tmp_path / "run"
    run_vlp("fit", str(REPO / "experiments" / "silc.yaml"), *TINY_OVERRIDES, *SMALL_SILC_YAML, "trainer.enable_progress_bar=false",
            f"run_dir={run_dir}")
    checkpoint = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    teacher_keys = [k for k in checkpoint["state_dict"] if k.startswith("objectives.silc.teacher.")]
    assert teacher_keys and "objectives.silc.center" in checkpoint["state_dict"]
    module, _ = build([SILC])
    in_optimizer = {id(p) for group in build_optimizer(module, module.optim_config).param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in module.objectives["silc"].teacher.parameters())
    module.train()
    assert not module.objectives["silc"].teacher.training and not module.objectives["silc"].teacher.module.training
    module.load_trained_state(checkpoint["state_dict"])
    for key in teacher_keys:
        torch.testing.assert_close(module.state_dict()[key], checkpoint["state_dict"][key], rtol=0, atol=0)
    moved = checkpoint["state_dict"]["objectives.silc.teacher.module.head.prototypes"]
    assert not torch.equal(moved, build([SILC])[0].state_dict()["objectives.silc.teacher.module.head.prototypes"])


def test_identity_crops_give_the_image_and_crops_are_crop_major():
    images = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    crops = random_resized_crops(images, 2, (1.0, 1.0), (1.0, 1.0), flip=False)
    torch.testing.assert_close(crops, images.repeat(2, 1, 1, 1), rtol=0, atol=1e-12)
