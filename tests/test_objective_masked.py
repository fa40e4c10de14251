"""FLIP, MAE and CFM-ViT in float64 against direct formulas (loss and gradients), on the real tiny towers."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.heads.patch_decoder import PatchDecoder
from vlp.registry import ConfigError
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES

VIT = "model.image_encoder.model_kwargs={img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}"
DECODER = "decoder_width: 16, decoder_depth: 1, decoder_heads: 2"


def tiny(objectives: str, vit: str = VIT):
    """A float64 module with a 4x4-patch ViT and one batch of 4 of the shapes data."""
    experiment = load_experiment(
        REPO / "experiments" / "tiny_vit.yaml",
        TINY_OVERRIDES + [vit, f"model.objectives={objectives}", "data.train_size=16", "data.batch_size=4"],
    )
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule).double().train()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    batch.images = batch.images.double()
    return module, batch


def step_of(module, batch) -> Step:
    torch.manual_seed(3)
    return Step(batch, module.encoder, module.image_views, module.text_views)


def vit_on_kept(tower, images, kept, drop=None):
    """The ViT written out: conv patch embedding + positions, gather kept patches, class token, blocks, norm."""
    vit = tower.backbone
    pixels = (images - tower.mean) / tower.std
    patches = F.conv2d(pixels, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=4).flatten(2).transpose(1, 2)
    positions = vit.pos_embed[:, 1:].expand(len(images), -1, -1)
    if drop is not None:
        positions = positions * (~drop).double().view(-1, 1, 1)
    patches = patches + positions
    patches = torch.stack([patches[b, kept[b]] for b in range(len(images))])
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(images), -1, -1)
    hidden = torch.cat([cls, patches], dim=1)
    for block in vit.blocks:
        hidden = block(hidden)
    return vit.norm(hidden)


def grads_match(loss, reference, parameters):
    expected = torch.autograd.grad(reference, parameters, retain_graph=True)
    for parameter, grad in zip(parameters, expected):
        torch.testing.assert_close(parameter.grad, grad)


def test_flip_is_infonce_on_the_patch_dropped_image():
    module, batch = tiny("[{name: flip, mask_ratio: 0.5}]")
    flip = module.objectives["flip"]
    step = step_of(module, batch)
    out = flip(step)
    out["loss"].backward(retain_graph=True)
    kept = step.image("flip_mask50").kept
    assert kept.shape == (4, 8) and len(set(kept[0].tolist())) == 8

    tower = module.encoder.image_tower
    images = vit_on_kept(tower, batch.images, kept)[:, 0] @ tower.projection.weight.T
    texts = module.encoder.text_tower(batch.input_ids, batch.attention_mask).embedding
    logits = math.exp(flip.logit_scale.log_value.item()) * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    # -1/2N sum_i [log softmax_j(l_ij)_i + log softmax_j(l_ji)_i]
    reference = -(logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean()) / 2
    torch.testing.assert_close(out["loss"], reference)
    parameters = [tower.projection.weight, tower.backbone.patch_embed.proj.weight, tower.backbone.cls_token]
    grads_match(out["loss"], reference, parameters)
    assert out["masked"] == 1.0


def test_flip_unmasked_final_phase_reads_the_full_image():
    module, _ = tiny("[{name: flip, mask_ratio: 0.75, unmasked_from: 0.9}]")
    flip = module.objectives["flip"]
    assert flip.current_view(0.5) == "flip_mask75" and flip.current_view(0.9) == "full"


def patch_of(image, n, side=4, grid=4):
    """Patch n of an image (C, H, W), row-major, flattened (row, column, channel) as MAE's patchify."""
    row, column = divmod(n, grid)
    return image[:, row * side : (row + 1) * side, column * side : (column + 1) * side].permute(1, 2, 0).reshape(-1)


@pytest.mark.parametrize("normalize", [True, False])
def test_mae_loss_is_mean_squared_error_on_dropped_patches(normalize: bool):
    module, batch = tiny(f"[{{name: mae, mask_ratio: 0.75, normalize_targets: {str(normalize).lower()}, {DECODER}}}]")
    mae = module.objectives["mae"]
    step = step_of(module, batch)
    out = mae(step)
    out["loss"].backward(retain_graph=True)
    features = step.image("mae_mask75")
    assert features.kept.shape == (4, 4)
    predicted = mae.decoder(features.tokens, features.kept)
    errors = []
    for b in range(4):
        for n in set(range(16)) - set(features.kept[b].tolist()):
            target = patch_of(batch.images[b], n)
            if normalize:
                target = (target - target.mean()) / torch.sqrt(target.var() + 1e-6)
            errors.append(((predicted[b, n] - target) ** 2).mean())
    reference = torch.stack(errors).mean()
    assert len(errors) == 4 * 12
    torch.testing.assert_close(out["loss"], reference)
    vit = module.encoder.image_tower.backbone
    grads_match(out["loss"], reference, [mae.decoder.head.weight, mae.decoder.mask_token, vit.blocks[0].attn.qkv.weight])


def test_patch_decoder_places_visible_tokens_and_mask_tokens_on_the_grid():
    torch.manual_seed(0)
    decoder = PatchDecoder(in_width=8, grid=(2, 3), out_dim=5, width=16, depth=1, num_heads=2).double()
    tokens, kept = torch.randn(2, 2, 8, dtype=torch.float64), torch.tensor([[4, 1], [0, 5]])
    grid = decoder.mask_token.expand(2, 6, 16).clone()
    for b in range(2):
        for j in range(2):
            grid[b, kept[b, j]] = decoder.embed(tokens[b, j])
    expected = decoder.head(decoder.norm(decoder.blocks(grid + decoder.positions)))
    torch.testing.assert_close(decoder(tokens, kept), expected)


def test_cfm_vit_reconstructs_projected_unmasked_tokens_without_their_gradient():
    module, batch = tiny(f"[{{name: cfm_vit, mask_ratio: 0.5, position_dropout: 0.5, {DECODER}}}]")
    cfm = module.objectives["cfm_vit"]
    step = step_of(module, batch)
    out = cfm(step)
    out["loss"].backward(retain_graph=True)
    view = step.image("cfm_mask50_ped50")
    assert view.positions_dropped.dtype == torch.bool and view.positions_dropped.shape == (4,)
    tower = module.encoder.image_tower
    masked_tokens = vit_on_kept(tower, batch.images, view.kept, view.positions_dropped)[:, 1:]
    torch.testing.assert_close(view.tokens, masked_tokens)
    predicted = cfm.decoder(masked_tokens, view.kept)
    with torch.no_grad():
        targets = vit_on_kept(tower, batch.images, torch.arange(16).expand(4, 16))[:, 1:] @ tower.projection.weight.T
    terms = []
    for b in range(4):
        for n in set(range(16)) - set(view.kept[b].tolist()):
            p, t = predicted[b, n], targets[b, n]
            terms.append(1 - (p @ t) / (p.norm() * t.norm()))
    reference = torch.stack(terms).mean()
    torch.testing.assert_close(out["loss"], reference)
    # The targets carry no gradient: the projection is reached only through them, so it gets none.
    assert tower.projection.weight.grad is None or not tower.projection.weight.grad.any()
    grads_match(out["loss"], reference, [cfm.decoder.head.weight, tower.backbone.blocks[0].mlp.fc1.weight])


def test_positions_drop_on_a_dynamic_size_vit_at_its_native_size_only():
    """dynamic_img_size (SILC's smaller local crops) keeps the stored positions at img_size; other sizes are refused."""
    module, batch = tiny(f"[{{name: cfm_vit, mask_ratio: 0.5, position_dropout: 0.5, {DECODER}}}]", VIT[:-1] + ", dynamic_img_size: true}")
    step = step_of(module, batch)
    view = step.image("cfm_mask50_ped50")
    assert view.positions_dropped.any()
    torch.testing.assert_close(view.tokens, vit_on_kept(module.encoder.image_tower, batch.images, view.kept, view.positions_dropped)[:, 1:])
    small = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ConfigError, match="images at its img_size"):
        module.encoder.image_tower.forward_patches(small, keep=None, drop_positions=torch.tensor([True, False]), layers=())


@pytest.mark.parametrize("name", ["flip50", "flip75", "clip_flip_view", "mae", "clip_mae", "cfm_vit"])
def test_example_experiments_build_and_give_finite_losses(name: str):
    experiment = load_experiment(REPO / "experiments" / f"{name}.yaml", TINY_OVERRIDES + ["data.train_size=8", "data.batch_size=4"])
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    step = Step(datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0), module.encoder, module.image_views, module.text_views)
    for objective in module.objectives.values():
        assert torch.isfinite(objective(step)["loss"])
    assert len(module.image_views) == 2  # the full image and one patch-dropped view, shared where named alike


@pytest.mark.slow
def test_flip_trains_masked_then_unmasked_through_fit(tiny_overrides):
    from vlp.run import fit

    run_dir = fit(str(REPO / "experiments" / "flip50.yaml"), tiny_overrides + ["model.objectives.0.unmasked_from=0.5", "eval=[]"])
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        masked = [float(row["train/flip/masked"]) for row in csv.DictReader(handle) if row.get("train/flip/masked")]
    assert masked == [1.0] * 4 + [0.0] * 4  # 8 steps; from half-way on, full images
