"""`sycoca_mim` against a direct float64 computation: attentive patch choice, loss and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlp.batch import Batch
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.registry import ConfigError
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES

# 16x16 images in 4x4 patches: a 4x4 grid, so choosing half of the patches is a real choice.
GRID_OVERRIDES = [
    "model.image_encoder.model_kwargs={img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}",
]


def tiny_module(objectives: str, tmp_path: Path, extra: list[str] = ()):
    overrides = TINY_OVERRIDES + GRID_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"model.objectives={objectives}", *extra]
    experiment = load_experiment(str(REPO / "experiments" / "tiny_vit.yaml"), overrides)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    return module, datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


def direct_loss(objective, encoder, batch: Batch, normalize: bool):
    """Top-(1-ratio) patches by cosine(text embedding, projected patch token), written as loops;
    the tower on those patches; the decoder; MAE's mean squared error over hidden patches."""
    full = encoder.image_tower(batch.images)
    text = encoder.text_tower(batch.input_ids, batch.attention_mask)
    size, patches = full.tokens.shape[:2]
    keep = []
    for b in range(size):
        t = text.embedding[b].detach()
        scores = [float(t @ encoder.image_tower.projection(full.tokens[b, n]).detach()
                        / (t.norm() * encoder.image_tower.projection(full.tokens[b, n]).detach().norm()))
                  for n in range(patches)]
        keep.append(sorted(sorted(range(patches), key=lambda n: -scores[n])[: objective.keep]))
    keep = torch.tensor(keep)
    visible = encoder.image_tower.forward_patches(batch.images, keep=keep)
    prediction = objective.decoder(visible.tokens, keep, text.tokens, text.mask)
    p = objective.patch_size[0]
    total, count = 0.0, 0
    for b in range(size):
        for n in range(patches):
            if n in keep[b].tolist():
                continue
            row, column = divmod(n, 4)
            target = batch.images[b, :, row * p : (row + 1) * p, column * p : (column + 1) * p].permute(1, 2, 0).reshape(-1)
            if normalize:
                target = (target - target.mean()) / (target.var() + 1e-6).sqrt()
            total = total + ((prediction[b, n] - target) ** 2).mean()
            count += 1
    return total / count, keep


@pytest.mark.parametrize("normalize", [False, True])
def test_sycoca_mim_loss_and_gradients_equal_the_direct_formula_in_float64(normalize: bool, tmp_path: Path):
    objectives = f"[{{name: clip}}, {{name: sycoca_mim, mask_ratio: 0.5, decoder_width: 16, decoder_depth: 1, normalize_target: {str(normalize).lower()}}}]"
    module, batch = tiny_module(objectives, tmp_path)
    module.double()
    batch = Batch(batch.images.double(), batch.input_ids, batch.attention_mask)
    objective, encoder = module.objectives["sycoca_mim"], module.encoder
    assert objective.keep == 8
    loss = objective(Step(batch, encoder, module.image_views, module.text_views))["loss"]
    expected, keep = direct_loss(objective, encoder, batch, normalize)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    parameters = [p for p in module.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, parameters, allow_unused=True)
    want = torch.autograd.grad(expected, parameters, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    named = dict(zip([n for n, p in module.named_parameters() if p.requires_grad], got))
    assert named["objectives.sycoca_mim.decoder.mask_token"] is not None
    assert any(g is not None for n, g in named.items() if n.startswith("encoder.text_tower.backbone"))  # the text guides
    assert named["encoder.image_tower.projection.weight"] is None  # the choice of patches carries no gradient


def test_sycoca_mim_keeps_the_patches_the_text_points_at():
    """With patch tokens built so that the text embedding aligns with chosen patches, those are kept."""
    from vlp.masked_modeling import text_guided_keep_indices

    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    patches = torch.tensor([[[0.9, 0.1], [0.0, 1.0], [0.8, -0.2], [-1.0, 0.0]], [[1.0, 0.0], [0.2, 0.9], [0.0, -1.0], [0.1, 0.7]]])
    assert text_guided_keep_indices(text, F.normalize(patches, dim=-1), 2).tolist() == [[0, 2], [1, 3]]


def test_sycoca_mim_refuses_a_patch_dropped_view_and_a_bad_ratio(tmp_path: Path):
    with pytest.raises(ConfigError, match="mask_ratio"):
        tiny_module("[{name: sycoca_mim, mask_ratio: 1.0}]", tmp_path)
    module, batch = tiny_module(
        "[{name: sycoca_mim, image_view: half}]", tmp_path, ["model.views={half: {name: patch_drop, mask_ratio: 0.5}}"]
    )
    with pytest.raises(ConfigError, match="already dropped"):
        module.objectives["sycoca_mim"](Step(batch, module.encoder, module.image_views, module.text_views))


@pytest.mark.slow
def test_sycoca_experiment_trains_through_vlp_fit_and_its_reconstruction_loss_falls(tmp_path: Path):
    """`vlp fit experiments/sycoca.yaml` (CoCa + TG-MIM; `fit` is the command's function), shrunk: both objectives log and TG-MIM's loss falls."""
    import csv

    from vlp.run import fit

    run_dir = tmp_path / "run"
    overrides = [
        "model.embed_dim=32",
        "model.image_encoder.model_kwargs={img_size: 32, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}",
        "model.text_encoder.config={model_type: clip_text_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}",
        "model.objectives.0.decoder_width=32", "model.objectives.0.decoder_depth=1", "model.objectives.0.image_queries=8",
        "model.objectives.1.decoder_width=32", "model.objectives.1.decoder_depth=1",
        "data.train_size=512", "data.val_size=64", "data.batch_size=32", "optim.lr=2e-3", "optim.warmup_steps=5",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1", "eval=[]", f"run_dir={run_dir}",
    ]
    fit(str(REPO / "experiments" / "sycoca.yaml"), overrides)
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/sycoca_mim/loss")]
    losses = [float(row["train/sycoca_mim/loss"]) for row in rows]
    assert len(losses) == 16 and all(row["train/coca/loss"] for row in rows)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)

