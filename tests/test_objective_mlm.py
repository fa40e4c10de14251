"""The `mlm` objective against a direct float64 computation, its view, its errors, and a learning run."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vlp.batch import Batch
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import experiment_from_resolved, load_experiment
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint
from vlp.step import Step
from vlp.text.masking import IGNORE_INDEX, maskable_tokens
from vlp.views.bert_mask import LABELS

from conftest import LEARNING_OVERRIDES, REPO, TINY_OVERRIDES


def tiny_module(objective: str, tmp_path: Path):
    experiment = load_experiment(
        str(REPO / "experiments" / "tiny_vit.yaml"),
        TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"model.objectives=[{objective}]"],
    )
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    return module, batch


def direct_mlm_loss(objective, encoder, batch: Batch, masked_ids, labels):
    """BERT's MLM loss written out: transform (dense, exact GELU, LayerNorm), tied decoder, mean NLL."""
    chosen = labels != IGNORE_INDEX
    hidden = encoder.text_tower(masked_ids, batch.attention_mask).tokens
    if objective.fusion is not None:
        hidden = objective.fusion(hidden, batch.attention_mask.bool(), encoder.image_tower(batch.images).tokens)
    dense, norm = objective.head.transform[0], objective.head.transform[2]
    x = hidden[chosen] @ dense.weight.T + dense.bias
    x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-12) * norm.weight + norm.bias
    logits = x @ encoder.text_tower.backbone.get_input_embeddings().weight.T + objective.head.bias
    log_probabilities = logits - logits.exp().sum(-1, keepdim=True).log()
    targets = labels[chosen]
    loss = -log_probabilities[torch.arange(len(targets)), targets].mean()
    return loss, (logits.argmax(-1) == targets).double().mean()


@pytest.mark.parametrize("fusion_depth", [0, 1])
def test_mlm_loss_and_gradients_equal_the_direct_formula_in_float64(fusion_depth: int, tmp_path: Path):
    module, batch = tiny_module(f"{{name: mlm, fusion_depth: {fusion_depth}}}", tmp_path)
    module.double()
    batch = Batch(batch.images.double(), batch.input_ids, batch.attention_mask)
    objective, encoder = module.objectives["mlm"], module.encoder
    torch.manual_seed(0)
    step = Step(batch, encoder, module.image_views, module.text_views)
    outputs = objective(step)
    masked = step.text("bert_mask")
    labels = masked.meta[LABELS]
    chosen = labels != IGNORE_INDEX
    assert chosen.sum() > 10
    assert torch.equal(labels[chosen], batch.input_ids[chosen])
    assert torch.equal(masked.input_ids[~chosen], batch.input_ids[~chosen])
    expected, accuracy = direct_mlm_loss(objective, encoder, batch, masked.input_ids, labels)
    torch.testing.assert_close(outputs["loss"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outputs["accuracy"].double(), accuracy)
    parameters = [p for p in module.parameters() if p.requires_grad]
    got = torch.autograd.grad(outputs["loss"], parameters, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(expected, parameters, allow_unused=True)
    touched = 0
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
            touched += 1
    embedding = encoder.text_tower.backbone.get_input_embeddings().weight
    assert embedding.grad is None and got[[p is embedding for p in parameters].index(True)] is not None  # tied: the decoder trains the embeddings
    image_trained = any(g is not None for g, p in zip(got, parameters) if any(p is q for q in encoder.image_tower.parameters()))
    assert image_trained == (fusion_depth > 0)


def test_mlm_refuses_a_tokenizer_without_a_mask_token():
    from vlp.needs import SpecialTokens
    from vlp.objectives.mlm import MaskedLanguageModeling

    no_mask = SpecialTokens(pad=0, bos=2, eos=3, mask=None, cls=None, sep=None, unk=1, all=(0, 1, 2, 3))
    with pytest.raises(ConfigError, match="mask token"):
        MaskedLanguageModeling(text_width=8, image_width=8, vocab_size=10, special_tokens=no_mask, encoder=None)


def test_mlm_pointed_at_an_unmasked_view_says_so(tmp_path: Path):
    module, batch = tiny_module("{name: mlm, text_view: full}", tmp_path)
    step = Step(batch, module.encoder, module.image_views, module.text_views)
    with pytest.raises(ConfigError, match="masks nothing"):
        module.objectives["mlm"](step)


def test_a_yaml_bert_mask_view_sets_the_masking_rate(tmp_path: Path):
    experiment = load_experiment(
        str(REPO / "experiments" / "tiny_vit.yaml"),
        TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}", "model.objectives=[{name: mlm, text_view: all}]",
                          "model.views={all: {name: bert_mask, mask_probability: 1.0, replace_with_mask: 1.0, replace_with_random: 0.0}}"],
    )
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    step = Step(batch, module.encoder, module.image_views, module.text_views)
    assert set(module.text_views) == {"full", "all"}  # the objective's default view is not declared
    assert torch.isfinite(module.objectives["mlm"](step)["loss"])
    masked = step.text("all")
    special = module.encoder.text_tower.tokenizer.all_special_ids
    real = maskable_tokens(batch.input_ids, batch.attention_mask, special)
    assert torch.equal(masked.meta[LABELS] != IGNORE_INDEX, real)
    assert (masked.input_ids[real] == module.encoder.text_tower.tokenizer.mask_token_id).all()
    bad = load_experiment(str(REPO / "experiments" / "tiny_vit.yaml"),
                          TINY_OVERRIDES + ["model.views={bad: {name: bert_mask, mask_probability: 0.0}}"])
    with pytest.raises(ConfigError, match="mask_probability"):
        build_module(bad, datamodule)


def majority_token_share(run_dir: Path) -> float:
    """Accuracy of always predicting the most frequent maskable token of the validation captions."""
    checkpoint = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    experiment = experiment_from_resolved(yaml.safe_load(checkpoint["vlp"]["config"]), [], source="test")
    datamodule = build_datamodule(experiment)
    datamodule.setup("validate")
    module = build_module(experiment, datamodule, tokenizer_json=checkpoint["vlp"]["tokenizer"])
    special = module.encoder.text_tower.tokenizer.all_special_ids
    counts = torch.zeros(0, dtype=torch.long)
    for batch in datamodule.val_dataloader():
        ids = batch.input_ids[maskable_tokens(batch.input_ids, batch.attention_mask, special)]
        new = torch.bincount(ids)
        counts = torch.nn.functional.pad(counts, (0, max(0, len(new) - len(counts)))) + torch.nn.functional.pad(new, (0, max(0, len(counts) - len(new))))
    return (counts.max() / counts.sum()).item()


@pytest.mark.slow
def test_image_fused_mlm_predicts_masked_words_far_above_the_majority_token(tmp_path: Path):
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "vlp", "fit", str(REPO / "experiments" / "clip_mlm.yaml"), *LEARNING_OVERRIDES,
         "eval=[]", "data.val_size=256", "trainer.max_epochs=1", f"run_dir={run_dir}"],
        check=True, cwd=tmp_path,
    )
    with open(next((run_dir / "csv").glob("version_*/metrics.csv"))) as handle:
        accuracy = [float(row["val/mlm/accuracy"]) for row in csv.DictReader(handle) if row.get("val/mlm/accuracy")]
    baseline = majority_token_share(run_dir)
    print(f"MLM validation accuracy per epoch {accuracy}, majority-token baseline {baseline:.3f}")
    assert accuracy[-1] > 2.5 * baseline, (accuracy, baseline)  # about 0.40 against 0.12 on 2 CPU cores
