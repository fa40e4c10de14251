"""The `coca` objective against CoCa's loss written out in float64, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.batch import Batch
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.objectives.coca import attends_causally
from vlp.registry import ConfigError
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES

COCA = "{name: coca, decoder_width: 32, decoder_depth: 1, heads: 2, image_queries: 4, label_smoothing: 0.1}"


def tiny_module(tmp_path: Path, objectives: str = COCA, extra: tuple[str, ...] = ()):
    experiment = load_experiment(
        str(REPO / "experiments" / "tiny_vit.yaml"),
        TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"model.objectives=[{objectives}]", *extra],
    )
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    return module, datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


def direct_coca_loss(objective, encoder, batch: Batch, smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CoCa's loss from the paper: L = 1 * InfoNCE(pooled image, text) + 2 * sum over tokens of -log P(y_t | y_<t, image)."""
    image_tokens = encoder.image_tower(batch.images).tokens
    text = encoder.text_tower(batch.input_ids, batch.attention_mask)
    # Contrastive: one attentional-pooling query, a linear map, cosine logits times the learned scale.
    image = objective.image_projection(objective.image_pooler(image_tokens)[:, 0])
    image = image / image.norm(dim=-1, keepdim=True)
    texts = text.embedding / text.embedding.norm(dim=-1, keepdim=True)
    logits = objective.logit_scale() * image @ texts.T
    n = len(logits)
    image_to_text = -(logits.diagonal() - torch.logsumexp(logits, dim=1)).sum() / n
    text_to_image = -(logits.diagonal() - torch.logsumexp(logits, dim=0)).sum() / n
    contrastive = (image_to_text + text_to_image) / 2
    # Captioning: position t of the decoder (reading text states 0..t and the image) predicts token t+1.
    token_logits = objective.decoder(text.tokens[:, :-1], objective.decoder.image_memory(image_tokens))
    terms = []
    for b in range(n):
        for t in range(batch.input_ids.shape[1] - 1):
            if batch.attention_mask[b, t + 1]:
                log_p = token_logits[b, t] - torch.logsumexp(token_logits[b, t], dim=0)
                terms.append((1 - smoothing) * -log_p[batch.input_ids[b, t + 1]] + smoothing * -log_p.mean())
    caption = torch.stack(terms).mean()
    return contrastive + 2.0 * caption, contrastive, caption


def test_coca_loss_and_gradients_equal_the_direct_formula_in_float64(tmp_path: Path):
    module, batch = tiny_module(tmp_path)
    module.double()
    batch = Batch(batch.images.double(), batch.input_ids, batch.attention_mask)
    objective, encoder = module.objectives["coca"], module.encoder
    assert (batch.attention_mask == 0).any()  # captions of different lengths: padding is exercised
    outputs = objective(Step(batch, encoder, module.image_views, module.text_views))
    expected, contrastive, caption = direct_coca_loss(objective, encoder, batch, 0.1)
    torch.testing.assert_close(outputs["loss"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outputs["contrastive"], contrastive.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outputs["caption"], caption.detach(), rtol=1e-12, atol=1e-12)
    parameters = [p for p in module.parameters() if p.requires_grad]
    got = torch.autograd.grad(outputs["loss"], parameters, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(expected, parameters, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    trained = {name for (name, _), g in zip(((n, p) for n, p in module.named_parameters() if p.requires_grad), got) if g is not None}
    for part in ("objectives.coca.decoder.", "objectives.coca.image_pooler.", "encoder.image_tower.", "encoder.text_tower."):
        assert any(name.startswith(part) for name in trained), part


def test_coca_refuses_a_bidirectional_text_tower(tmp_path: Path):
    bert = "model.text_encoder.config={model_type: bert, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}"
    with pytest.raises(ConfigError, match="causal text tower"):
        tiny_module(tmp_path, extra=(bert,))


def test_the_causality_probe_tells_clip_text_from_bert(tmp_path: Path):
    module, _ = tiny_module(tmp_path, objectives="{name: clip}")
    assert attends_causally(module.encoder.text_tower, 2, 3, 5)
    bert = "model.text_encoder.config={model_type: bert, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}"
    module, _ = tiny_module(tmp_path, objectives="{name: clip}", extra=(bert,))
    assert not attends_causally(module.encoder.text_tower, 2, 3, 5)


def test_captions_are_decoded_text_and_beam_search_scores_at_least_greedy(tmp_path: Path):
    """Untrained, the captions are arbitrary, but beam search's caption is at least as likely as greedy's."""
    module, batch = tiny_module(tmp_path)
    module.eval()
    objective, encoder = module.objectives["coca"], module.encoder
    images = batch.images[:4]
    greedy = objective.generate(encoder, images, max_new_tokens=6)
    beam = objective.generate(encoder, images, max_new_tokens=6, beam_size=3)
    assert (greedy[:, 0] == objective.bos_id).all() and (beam[:, 0] == objective.bos_id).all()
    assert objective.caption(encoder, images, max_new_tokens=6) == encoder.text_tower.tokenizer.batch_decode(greedy, skip_special_tokens=True)

    @torch.no_grad()
    def log_likelihood(ids: torch.Tensor) -> torch.Tensor:
        ended = (ids == objective.eos_id).cumsum(1)
        real = torch.cat([torch.ones_like(ids[:, :1]), ended[:, :-1]], dim=1) == 0  # up to and including the end token
        states = encoder.text_tower(ids, torch.ones_like(ids)).tokens
        logits = objective.decoder(states[:, :-1], objective.decoder.image_memory(encoder.image_tower(images).tokens))
        logits[..., [objective.pad_id, objective.bos_id]] = float("-inf")
        chosen = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
        return torch.where(real[:, 1:], chosen, 0.0).sum(1)

    assert (log_likelihood(beam) >= log_likelihood(greedy) - 1e-5).all()
    ranked = objective.generate(encoder, images, max_new_tokens=6, beam_size=3, ranked=True)
    assert torch.equal(ranked[:, 0], beam)
    likelihoods = torch.stack([log_likelihood(ranked[:, j]) for j in range(3)], dim=1)
    assert (likelihoods[:, :-1] >= likelihoods[:, 1:] - 1e-5).all()  # best first, by the likelihood computed directly
    decoded = encoder.text_tower.tokenizer.batch_decode(ranked[:, :2].flatten(0, 1), skip_special_tokens=True)
    assert objective.captions(encoder, images, 2, beam_size=3, max_new_tokens=6) == [decoded[0:2], decoded[2:4], decoded[4:6], decoded[6:8]]
