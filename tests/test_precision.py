"""Losses are computed in float32 whatever the autocast dtype; ``bf16-mixed`` trains on CPU.

Under autocast the towers hand bf16 embeddings to the losses. Each loss must return
float32, equal (values and gradients) to the float32 computation on the same
bf16-rounded embeddings, and so within bf16 input rounding of the float32 model.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vlp import functional as losses
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment

from conftest import REPO, TINY_OVERRIDES

B, N, D = 6, 4, 16
SCALE = torch.tensor(20.0)


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randn(B, D, generator=g), "texts": torch.randn(B, D, generator=g),
        "semantic": torch.randn(B, D, generator=g), "captions": torch.randn(B, 2, D, generator=g),
        "image_tokens": torch.randn(B, N, D, generator=g), "text_tokens": torch.randn(B, N + 1, D, generator=g),
    }


VALID = torch.tensor([[True, True], [True, False]] * (B // 2))
IMAGE_MASK = torch.ones(B, N, dtype=torch.bool)
TEXT_MASK = torch.arange(N + 1).expand(B, -1) < torch.arange(2, B + 2).clamp(max=N + 1).unsqueeze(1)

LOSSES = {
    "infonce": lambda x: losses.infonce_loss(x["images"], x["texts"], SCALE),
    "sigmoid": lambda x: losses.sigmoid_loss(x["images"], x["texts"], SCALE, torch.tensor(-5.0)),
    "hn_nce": lambda x: losses.hn_nce_loss(x["images"], x["texts"], SCALE, alpha=0.5, beta=0.3),
    "llave": lambda x: losses.llave_loss(x["images"], x["texts"], SCALE, alpha=0.5),
    "soft_label": lambda x: losses.soft_label_infonce(x["images"], x["texts"], SCALE, negative_mass=0.1),
    "multi_positive": lambda x: losses.multi_positive_infonce(x["images"], x["captions"], VALID, SCALE),
    "intra_modality": lambda x: losses.intra_modality_separation_loss(x["images"], x["texts"], x["semantic"], SCALE),
    "filip": lambda x: losses.filip_loss(x["image_tokens"], IMAGE_MASK, x["text_tokens"], TEXT_MASK, SCALE),
    "relaxed_matching": lambda x: losses.relaxed_matching_loss(x["image_tokens"], IMAGE_MASK, x["text_tokens"], TEXT_MASK, SCALE),
}


def value_and_grads(loss_fn, x: dict[str, torch.Tensor], autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(x)
    loss.backward()
    return loss, {k: v.grad for k, v in x.items() if v.grad is not None}


@pytest.mark.parametrize("name", LOSSES)
def test_loss_under_bf16_autocast_is_float32_and_equals_float32_on_the_same_inputs(name: str):
    loss_fn = LOSSES[name]
    full = inputs()
    rounded = {k: v.to(torch.bfloat16) for k, v in full.items()}  # what a bf16 tower hands over
    loss, grads = value_and_grads(loss_fn, rounded, autocast=True)
    reference, reference_grads = value_and_grads(loss_fn, {k: v.float() for k, v in rounded.items()}, autocast=False)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for key, grad in reference_grads.items():  # gradients reach the bf16 embeddings, rounded once
        torch.testing.assert_close(grads[key], grad.to(torch.bfloat16), rtol=0, atol=0)
    exact, _ = value_and_grads(loss_fn, full, autocast=False)
    torch.testing.assert_close(loss, exact, rtol=2e-2, atol=2e-2)  # only the inputs' bf16 rounding remains
    # float32 inputs under autocast (e.g. a float32 head) are not rounded either
    torch.testing.assert_close(value_and_grads(loss_fn, full, autocast=True)[0], exact, rtol=1e-6, atol=1e-6)


class RecordDtypes(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        clip = pl_module.objectives["clip"]
        original = clip.forward

        def forward(step):
            outputs = original(step)
            self.seen.append((step.image().embedding.dtype, outputs["loss"].dtype))
            return outputs

        clip.forward = forward


def test_bf16_mixed_trains_on_cpu_with_bf16_towers_and_a_float32_loss(tmp_path):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES + ["data.train_size=64"])
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    record = RecordDtypes()
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", precision="bf16-mixed", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[record])
    trainer.fit(module, datamodule=datamodule)
    assert record.seen == [(torch.bfloat16, torch.float32)] * 2
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed: float32 master weights
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in module.named_parameters())
