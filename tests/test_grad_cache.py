"""GradCache: K micro-batches give exactly the full batch's loss and gradients (float64), through Lightning too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.grad_cache import grad_cache_training_step, split_batch
from vlp.registry import ConfigError

DROPOUT = [
    "model.image_encoder.model_kwargs.drop_rate=0.3",
    "model.text_encoder.config.attention_dropout=0.3",  # CLIP's text model has attention dropout only
]


def built(experiment: str, overrides: list[str] = ()):
    torch.manual_seed(0)
    loaded = load_experiment(REPO / "experiments" / experiment, TINY_OVERRIDES + ["data.train_size=32", "data.batch_size=12", *overrides])
    datamodule = build_datamodule(loaded)
    datamodule.setup("fit")
    module = build_module(loaded, datamodule).double()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    batch.images = batch.images.double()
    return module, batch


def loss_and_grads(module, compute) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("experiment", ["tiny_vit.yaml", "siglip.yaml", "clip_filip_hn.yaml"])
def test_micro_batches_give_the_full_batch_loss_and_every_gradient(experiment: str):
    """12 samples as 5 uneven micro-batches; FILIP reads token embeddings (a projection of cached tokens)."""
    module, batch = built(experiment)
    module.train()
    full_loss, full = loss_and_grads(module, lambda: module._objective_losses(batch, "train"))
    cached_loss, cached = loss_and_grads(module, lambda: grad_cache_training_step(module, batch, 5))
    torch.testing.assert_close(cached_loss, full_loss, rtol=1e-12, atol=1e-12)
    assert cached.keys() == full.keys() and any("logit" in name for name in full)
    for name, grad in full.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_plain_accumulation_is_not_the_full_batch_gradient():
    """Why GradCache exists: averaging the micro-batches' own losses drops the cross-micro-batch negatives."""
    module, batch = built("tiny_vit.yaml")
    full_loss, full = loss_and_grads(module, lambda: module._objective_losses(batch, "train"))
    parts = split_batch(batch, 3)
    accumulated_loss, _ = loss_and_grads(module, lambda: sum(module._objective_losses(p, "train") for p in parts) / 3)
    assert not torch.allclose(accumulated_loss, full_loss, rtol=1e-3)


def test_dropout_is_replayed_so_the_cached_and_graph_passes_agree():
    """With one micro-batch, GradCache's two tower passes must draw the same dropout masks as one plain pass."""
    module, batch = built("tiny_vit.yaml", DROPOUT)
    module.train()
    torch.manual_seed(5)
    plain_loss, plain = loss_and_grads(module, lambda: module._objective_losses(batch, "train"))
    torch.manual_seed(5)
    cached_loss, cached = loss_and_grads(module, lambda: grad_cache_training_step(module, batch, 1))
    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-12, atol=1e-12)
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    torch.manual_seed(5)
    other_loss, _ = loss_and_grads(module, lambda: module._objective_losses(batch, "train"))
    torch.manual_seed(6)
    assert not torch.equal(module._objective_losses(batch, "train").detach(), other_loss)  # dropout is really on


def test_micro_batches_below_one_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="grad_cache_micro_batches must be 1"):
        built("tiny_vit.yaml", ["optim.grad_cache_micro_batches=0"])


@pytest.mark.slow
def test_yaml_switch_trains_through_lightning_to_the_same_weights_as_the_full_batch(tmp_path: Path):
    """Three float64 SGD steps with gradient clipping: micro-batched and full-batch runs end at the same weights."""
    from vlp.run import fit, load_vlp_checkpoint

    common = TINY_OVERRIDES + ["data.train_size=48", "data.batch_size=16", "trainer.precision=64-true", "trainer.max_steps=3",
                               "trainer.limit_val_batches=0", "optim.name=sgd", "optim.lr=0.5", "eval=[]"]
    states = []
    for name, extra in (("full", []), ("cached", ["optim.grad_cache_micro_batches=4"])):
        run_dir = fit(str(REPO / "experiments" / "tiny_vit.yaml"), common + extra + [f"run_dir={tmp_path / name}"])
        states.append(load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"])
    initial = build_module(*_experiment_and_data(common)).state_dict()
    moved = [k for k in states[0] if states[0][k].is_floating_point() and not torch.equal(states[0][k], initial[k].to(states[0][k].dtype))]
    assert moved and any("logit_scale" in k for k in moved)
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-9, atol=1e-12, msg=lambda m: f"{key}: {m}")


def _experiment_and_data(overrides: list[str]):
    import lightning as L

    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", overrides)
    L.seed_everything(experiment.run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    return experiment, datamodule


@pytest.mark.slow
def test_grad_cache_under_ddp_two_processes_equals_the_single_process_global_batch(tmp_path: Path):
    """2 ranks x 2 micro-batches of 2: DDP-averaged gradients equal one process on all 8 samples."""
    import copy

    import lightning as L

    from test_ddp_equivalence import GLOBAL_BATCH, FixedData, RecordGradients, _dataset
    from vlp.data.base import Collate

    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml",
                                 TINY_OVERRIDES + ["optim.name=sgd", "optim.warmup_steps=0", "optim.grad_cache_micro_batches=2"])
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule)
    dataset = _dataset(datamodule)
    reference = copy.deepcopy(module)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RecordGradients(str(tmp_path))], num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=FixedData(dataset, module.encoder.text_tower.tokenize, GLOBAL_BATCH // 2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    batch = Collate(reference.encoder.text_tower.tokenize, sample_caption=False)([dataset[i] for i in range(GLOBAL_BATCH)])
    reference.train()
    loss = reference._objective_losses(batch, "train")
    loss.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert set(ranks[0]["grads"]) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
