"""Activation checkpointing and torch.compile per tower: same loss and gradients, YAML switches.

Checkpointing is shown to be active by counting calls of the first block's MLP (pre-hooks inside the block:
the recomputation may stop early, before a forward hook would run): the backward pass
recomputes it, so it starts twice per step instead of once.
"""

from __future__ import annotations

import pytest
import torch

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.data.base import Collate
from vlp.registry import ConfigError
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES


def loss_and_grads(switches: list[str], count_blocks: bool = False):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES + switches)
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    calls = {"image": 0, "text": 0}
    if count_blocks:
        module.encoder.image_tower.backbone.blocks[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("image", calls["image"] + 1))
        module.encoder.text_tower.backbone.encoder.layers[0].mlp.register_forward_pre_hook(
            lambda *_: calls.__setitem__("text", calls["text"] + 1))
    batch = Collate(module.encoder.text_tower.tokenize, sample_caption=False)([datamodule.train_set[i] for i in range(8)])
    module.train()
    loss = module.objectives["clip"](Step(batch, module.encoder, module.image_views, module.text_views))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in module.named_parameters()}, calls, module


def test_grad_checkpointing_recomputes_blocks_and_keeps_loss_and_gradients():
    loss, grads, calls, _ = loss_and_grads([], count_blocks=True)
    switches = ["model.image_encoder.grad_checkpointing=true", "model.text_encoder.grad_checkpointing=true"]
    loss_ckpt, grads_ckpt, calls_ckpt, _ = loss_and_grads(switches, count_blocks=True)
    assert calls == {"image": 1, "text": 1} and calls_ckpt == {"image": 2, "text": 2}
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_compiled_towers_give_the_same_loss_and_gradients():
    loss, grads, _, _ = loss_and_grads([])
    loss_compiled, grads_compiled, _, module = loss_and_grads(["model.image_encoder.compile=true", "model.text_encoder.compile=true"])
    assert module.encoder.image_tower.backbone._compiled_call_impl is not None
    assert module.encoder.text_tower.backbone._compiled_call_impl is not None
    torch.testing.assert_close(loss_compiled, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert set(module.state_dict()) == set(loss_and_grads([])[3].state_dict())  # checkpoints keep their keys


def test_grad_checkpointing_must_be_a_boolean():
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES + ["model.image_encoder.grad_checkpointing=sometimes"])
