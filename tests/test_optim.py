"""Weight-decay groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.optim import parameter_groups, warmup_cosine

from conftest import REPO, TINY_OVERRIDES


def test_no_decay_on_biases_norms_embeddings_and_temperature():
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES)
    module = build_module(experiment, build_datamodule(experiment))
    decay, no_decay = parameter_groups(module, 0.1)
    names = {id(p): n for n, p in module.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "objectives.clip.logit_scale.log_value" in no_decay_names
    assert "encoder.image_tower.backbone.pos_embed" in no_decay_names
    assert "encoder.image_tower.backbone.cls_token" in no_decay_names
    assert "encoder.text_tower.backbone.embeddings.token_embedding.weight" in no_decay_names
    assert all(n.endswith(("bias",)) or "norm" in n or "embed" in n or "logit" in n or "cls_token" in n for n in no_decay_names)
    assert all(n.endswith("weight") and "norm" not in n for n in decay_names)
    assert "encoder.image_tower.projection.weight" in decay_names
    assert len(decay_names) + len(no_decay_names) == sum(1 for _ in module.parameters())


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.5 * (1 + 0.1) + 0.0), (100, 0.1)],
)
def test_warmup_then_cosine_to_min_ratio(step, expected):
    value = warmup_cosine(step, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    if step == 55:  # halfway through the cosine part
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert value == pytest.approx(expected)
