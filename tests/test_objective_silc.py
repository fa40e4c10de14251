"""SILC: the loss on the datamodule's crops, the EMA teacher's closed form, eval mode, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.batch import Batch
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.data.multi_crop import GLOBAL_CROPS, LOCAL_CROPS
from vlp.optim import build_optimizer
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES, run_vlp

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
# The tiny tower takes 16 px images in 8 px patches; local crops are 8 px (one patch), global ones 16 px.
CROPS = ["model.image_encoder.model_kwargs.dynamic_img_size=true", "data.multi_crop={global_crops: 2, local_crops: 2, local_size: 8}"]
SILC = "model.objectives=[{name: clip}, {name: silc, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}]"
# experiments/silc.yaml shrunk to the same head and crops, as command-line overrides.
SMALL_SILC_YAML = ["model.objectives.1.out_dim=64", "model.objectives.1.hidden_dim=32", "model.objectives.1.bottleneck_dim=16",
                   "model.image_encoder.model_kwargs.dynamic_img_size=true", "data.multi_crop.local_crops=2", "data.multi_crop.local_size=8"]


def build(overrides: list[str]):
    experiment = load_experiment(EXPERIMENT, TINY_OVERRIDES + CROPS + overrides)
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


def crop_batch(batch: int = 3, with_crops: bool = True) -> Batch:
    torch.manual_seed(3)
    crops = {GLOBAL_CROPS: torch.rand(batch, 2, 3, 16, 16), LOCAL_CROPS: torch.rand(batch, 2, 3, 8, 8)} if with_crops else {}
    ids = torch.ones(batch, 4, dtype=torch.long)
    return Batch(images=torch.rand(batch, 3, 16, 16), input_ids=ids, attention_mask=torch.ones_like(ids), extras=crops)


def test_loss_on_the_datamodule_crops_equals_dinos_formula_by_hand():
    """Student: every local crop at its own 8 px; teacher: every global crop; every (global, local) pair."""
    module, _ = build([SILC])
    module.train()
    silc = module.objectives["silc"]
    torch.nn.init.normal_(silc.center, std=0.1)
    center = silc.center.clone().double()
    batch = crop_batch()
    out = silc(Step(batch, module.encoder, module.image_views, module.text_views, progress=0.15))
    with torch.no_grad():
        teacher = silc.teacher.module
        students = [silc.head(module.encoder.image_tower(batch.extras[LOCAL_CROPS][:, k]).pooled).double() for k in range(2)]
        teachers = [teacher["head"](teacher["tower"](batch.extras[GLOBAL_CROPS][:, k]).pooled).double() for k in range(2)]
    temperature = 0.04 + (0.07 - 0.04) * 0.15 / 0.3  # linear warm-up over the first 30% of training
    pairs = [-(torch.softmax((t - center) / temperature, -1) * torch.log_softmax(s / 0.1, -1)).sum(-1) for t in teachers for s in students]
    expected = torch.stack(pairs).mean()
    assert abs(out["loss"].item() - expected.item()) < 1e-5 and abs(out["teacher_temperature"].item() - temperature) < 1e-7
    torch.testing.assert_close(silc.center.double(), 0.9 * center + 0.1 * torch.cat(teachers).mean(0), rtol=0, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in silc.teacher.parameters())
    assert module.encoder.image_tower.backbone.patch_embed.proj.weight.grad is not None


def test_a_batch_without_crops_names_the_setting():
    module, _ = build([SILC])
    step = Step(crop_batch(with_crops=False), module.encoder, module.image_views, module.text_views)
    with pytest.raises(ConfigError, match="set data.multi_crop"):
        module.objectives["silc"](step)
