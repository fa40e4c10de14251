"""Online distillation from a frozen hf_clip teacher: exact loss, frozen and reloaded teacher, fit + eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.functional_distillation import affinity_kl
from vlp.run import evaluate, fit, load_vlp_checkpoint
from vlp.step import Step
from vlp.text.word_tokenizer import build_word_tokenizer

from conftest import REPO, TINY_OVERRIDES

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel at 24 px (the student sees 16 px) with its own word tokenizer."""
    path = tmp_path_factory.mktemp("teacher")
    tokenizer = build_word_tokenizer(["a the small large red green blue circle square triangle"])
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 40, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config={**tower, "image_size": 24, "patch_size": 8}, projection_dim=16)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(teacher_dir: Path) -> list[str]:
    teacher = f"{{name: hf_clip, pretrained: '{teacher_dir}'}}"
    return TINY_OVERRIDES + [
        f"model.objectives=[{{name: clip}}, {{name: affinity_distillation, teacher_image_encoder: {teacher}, "
        f"teacher_text_encoder: {teacher}, teacher_embed_dim: 16, teacher_logit_scale: 20.0}}]"
    ]


def test_loss_is_the_affinity_kl_against_transformers_own_teacher_embeddings(teacher_dir: Path):
    experiment = load_experiment(EXPERIMENT, overrides(teacher_dir))
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    objective = module.objectives["affinity_distillation"]
    step = Step(batch, module.encoder, module.image_views, module.text_views)
    got = objective(step)

    reference = CLIPModel.from_pretrained(teacher_dir, local_files_only=True).eval()
    tokenizer = objective.teacher.text_tower.tokenizer
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        resized = F.interpolate(batch.images, size=(24, 24), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        teacher_images = reference.get_image_features(pixel_values=(resized - mean) / std).pooler_output
        tokens = tokenizer(batch.extras["texts"], padding=True, return_tensors="pt")
        teacher_texts = reference.get_text_features(**tokens).pooler_output
        student_images = module.encoder.image_tower(batch.images).embedding
        student_texts = module.encoder.text_tower(batch.input_ids, batch.attention_mask).embedding
    i2t, t2i = affinity_kl(student_images, student_texts, objective.logit_scale(), teacher_images, teacher_texts, 20.0)
    torch.testing.assert_close(got["loss"], i2t + t2i)
    assert not any(p.requires_grad for p in objective.teacher.parameters())


@pytest.mark.slow
def test_fit_leaves_the_teacher_out_of_checkpoints_and_eval_reloads_it(teacher_dir: Path, tmp_path: Path):
    run_dir = fit(EXPERIMENT, overrides(teacher_dir) + [f"run_dir={tmp_path / 'run'}"])
    checkpoint = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert not any(".teacher." in key for key in checkpoint["state_dict"])
    assert any(key.startswith("objectives.affinity_distillation.logit_scale") for key in checkpoint["state_dict"])
    metrics = evaluate(str(run_dir / "checkpoints" / "last.ckpt"), output=str(tmp_path / "eval.json"))
    assert metrics == json.loads((tmp_path / "eval.json").read_text())["metrics"]


@pytest.mark.slow
def test_a_vlp_checkpoint_is_a_teacher(tmp_path: Path):
    from vlp.api import load

    teacher_run = fit(EXPERIMENT, TINY_OVERRIDES + [f"run_dir={tmp_path / 'teacher'}", "eval=[]"])
    checkpoint = teacher_run / "checkpoints" / "last.ckpt"
    experiment = load_experiment(EXPERIMENT, TINY_OVERRIDES + [
        f"model.objectives=[{{name: clip}}, {{name: affinity_distillation, teacher: '{checkpoint}', teacher_logit_scale: 14.0}}]"])
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    objective = module.objectives["affinity_distillation"]
    got = objective(Step(batch, module.encoder, module.image_views, module.text_views))
    teacher, _, _ = load(checkpoint, device="cpu")
    with torch.no_grad():
        teacher_images, teacher_texts = teacher.encode_image(batch.images), teacher.encode_text(batch.extras["texts"])
        student_images = module.encoder.image_tower(batch.images).embedding
        student_texts = module.encoder.text_tower(batch.input_ids, batch.attention_mask).embedding
    i2t, t2i = affinity_kl(student_images, student_texts, objective.logit_scale(), teacher_images, teacher_texts, 14.0)
    torch.testing.assert_close(got["loss"], i2t + t2i)
