"""Tiled InfoNCE and SigLIP equal the dense losses (values, every gradient) and never hold B x B."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from objective_testing import _free_port
from vlp.functional import infonce_loss, sigmoid_loss
from vlp.tiled import both_way_logsumexp, row_logsigmoid_sum, tiled_infonce_loss, tiled_sigmoid_loss


def inputs(batch: int = 7, dim: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(batch, dim, generator=generator, dtype=torch.float64),
        "texts": torch.randn(batch, dim, generator=generator, dtype=torch.float64),
        "weights": torch.rand(batch, generator=generator, dtype=torch.float64) + 0.5,
        "scale": torch.tensor(6.5, dtype=torch.float64),
        "bias": torch.tensor(-3.0, dtype=torch.float64),
    }


def value_and_grads(loss_fn, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in data.items()}
    loss = loss_fn(**leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in sorted(leaves)], allow_unused=True)
    return (loss.detach(), *[g if g is not None else torch.zeros(()) for g in grads])


DENSE = {
    "clip": lambda images, texts, weights, scale, bias: infonce_loss(images, texts, scale, weights),
    "siglip": lambda images, texts, weights, scale, bias: sigmoid_loss(images, texts, scale, bias, weights),
}


def tiled(name: str, tile_size: int):
    if name == "clip":
        return lambda images, texts, weights, scale, bias: tiled_infonce_loss(images, texts, scale, tile_size, weights)
    return lambda images, texts, weights, scale, bias: tiled_sigmoid_loss(images, texts, scale, bias, tile_size, weights)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("tile_size", [1, 3, 7, 64])
def test_tiled_loss_and_every_gradient_equal_the_dense_loss(name: str, tile_size: int):
    data = inputs()
    for got, want in zip(value_and_grads(tiled(name, tile_size), data), value_and_grads(DENSE[name], data)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tiled_reductions_pass_gradcheck_against_finite_differences():
    data = inputs(batch=5, dim=3)
    q = data["images"].requires_grad_(True)
    k = data["texts"][:4].clone().requires_grad_(True)
    scale, bias = data["scale"].requires_grad_(True), data["bias"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, s: both_way_logsumexp(q, k, s, 2), (q, k, scale))
    assert torch.autograd.gradcheck(lambda q, k, s, b: row_logsigmoid_sum(q, k, s, b, -1, 3), (q, k, scale, bias))


def test_extreme_logits_stay_finite_and_exact():
    """Scale 100 on aligned features: exp overflows without the per-tile log-sum-exp."""
    data = inputs(batch=6, dim=4)
    data["texts"] = data["images"] + 1e-3 * data["texts"]
    data["scale"] = torch.tensor(1000.0, dtype=torch.float64)
    for name in ("clip", "siglip"):
        got, want = value_and_grads(tiled(name, 4), data), value_and_grads(DENSE[name], data)
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_no_tensor_of_batch_squared_size_exists_in_forward_or_backward(name: str):
    batch, dim, tile = 96, 8, 16
    data = inputs(batch, dim)
    with LargestTensor() as recorder:
        value_and_grads(tiled(name, tile), data)
    assert recorder.largest <= max(batch * dim, tile * tile) < batch * batch
    with LargestTensor() as dense_recorder:
        value_and_grads(DENSE[name], data)
    assert dense_recorder.largest >= batch * batch  # the recorder does see a dense matrix


def test_bfloat16_features_are_scored_in_float32():
    images = torch.randn(8, 4).bfloat16().requires_grad_(True)
    loss = tiled_infonce_loss(images, torch.randn(8, 4).bfloat16(), torch.tensor(10.0), 3)
    loss.backward()
    assert loss.dtype == torch.float32 and images.grad.dtype == torch.bfloat16


SIZES = (3, 5)
NAMES = ("loss", "bias", "images", "scale", "texts", "weights")  # value_and_grads' order


def ddp_worker(rank: int, out: str, port: int) -> None:
    """Uneven rank batches (3 and 5): each rank's tiled loss on its rows, DDP's averaging emulated."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        data = inputs(batch=sum(SIZES))
        start = sum(SIZES[:rank])
        local = {k: v[start : start + SIZES[rank]] if v.ndim else v for k, v in data.items()}
        results = {}
        for name in ("clip", "siglip"):
            values = dict(zip(NAMES, value_and_grads(tiled(name, 2), local)))
            for shared in ("loss", "scale", "bias"):  # the loss and shared parameters' gradients: averaged over ranks
                dist.all_reduce(values[shared])
                values[shared] /= 2
            for per_sample in ("images", "texts", "weights"):  # this rank's rows: DDP divides by the world size
                values[per_sample] /= 2
            results[name] = values
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_tiled_losses_on_two_processes_with_uneven_batches_equal_the_dense_global_batch(tmp_path: Path):
    mp.spawn(ddp_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    data = inputs(batch=sum(SIZES))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("clip", "siglip"):
        want = dict(zip(NAMES, value_and_grads(DENSE[name], data)))
        for key in NAMES:
            got = torch.cat([r[name][key] for r in ranks]) if key in ("images", "texts", "weights") else ranks[0][name][key]
            torch.testing.assert_close(got, want[key], msg=lambda m: f"{name} {key}: {m}")


def built(experiment: str, overrides: list[str]):
    from conftest import REPO, TINY_OVERRIDES
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment

    torch.manual_seed(0)
    loaded = load_experiment(REPO / "experiments" / experiment, TINY_OVERRIDES + ["data.train_size=32", "data.batch_size=16", *overrides])
    datamodule = build_datamodule(loaded)
    datamodule.setup("fit")
    return build_module(loaded, datamodule), datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


@pytest.mark.parametrize("experiment", ["tiny_vit.yaml", "siglip.yaml"])
def test_yaml_tile_size_gives_the_dense_objectives_loss_and_gradients(experiment: str):
    """Both towers in float64, so every parameter's gradient matches to float64 precision."""
    dense, batch = built(experiment, [])
    tiled_module, _ = built(experiment, ["model.objectives.0.tile_size=5"])
    assert next(iter(tiled_module.objectives.values())).tile_size == 5
    tiled_module.load_state_dict(dense.state_dict())
    batch.images = batch.images.double()
    losses = []
    for module in (dense.double(), tiled_module.double()):
        loss = module._objective_losses(batch, "val")
        loss.backward()
        losses.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(losses[1][0], losses[0][0])
    assert losses[0][1].keys() == losses[1][1].keys() and any("logit" in n for n in losses[0][1])
    for name, grad in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], grad, msg=lambda m: f"{name}: {m}")


def test_a_tile_size_below_one_is_refused_with_the_fix():
    from vlp.registry import ConfigError

    with pytest.raises(ConfigError, match="tile_size must be a positive"):
        built("tiny_vit.yaml", ["model.objectives.0.tile_size=0"])
