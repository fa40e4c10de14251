"""ALIP: consistency gates and the gated two-path loss against the paper's formulas as loops, DDP."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vlp.functional import consistency_gates, infonce_loss

from objective_testing import assert_ddp_matches_single_process

MOMENTUM, GAMMA = 0.9, 2.0


def reference_alip(images, raws, synthetics, scale, running):
    """Running means of cos(T,C), cos(I,T), cos(I,C); W_s = min(e^{g(s^T-a^T)}, 1); W_t, W_c = e^{g(s-a)}
    where s^T < a^T, else 1; loss = mean_i W_s (W_t L(x_i, t_i) + W_c L(x_i, c_i)), L symmetric InfoNCE."""
    n = images.shape[0]
    x = images / images.norm(dim=1, keepdim=True)
    t = raws / raws.norm(dim=1, keepdim=True)
    c = synthetics / synthetics.norm(dim=1, keepdim=True)
    sims = [[float(a[i].detach() @ b[i].detach()) for i in range(n)] for a, b in ((t, c), (x, t), (x, c))]
    running = [MOMENTUM * r + (1 - MOMENTUM) * sum(s) / n for r, s in zip(running, sims)]
    gates = []
    for i in range(n):
        inconsistent = sims[0][i] < running[0]
        w_s = min(math.exp(GAMMA * (sims[0][i] - running[0])), 1.0)
        w_t = math.exp(GAMMA * (sims[1][i] - running[1])) if inconsistent else 1.0
        w_c = math.exp(GAMMA * (sims[2][i] - running[2])) if inconsistent else 1.0
        gates.append((w_s, w_t, w_c))

    def pair_loss(queries, keys, i):
        forward = torch.log_softmax(torch.stack([scale * queries[i] @ keys[j] for j in range(n)]), 0)[i]
        backward = torch.log_softmax(torch.stack([scale * keys[i] @ queries[j] for j in range(n)]), 0)[i]
        return -(forward + backward) / 2

    total = sum(w_s * (w_t * pair_loss(x, t, i) + w_c * pair_loss(x, c, i)) for i, (w_s, w_t, w_c) in enumerate(gates))
    return total / n, torch.tensor(gates, dtype=torch.float64), torch.tensor(running, dtype=torch.float64)


def alip_loss(image_embeddings, raw_embeddings, synthetic_embeddings, logit_scale, running_means):
    """The objective's loss as a pure function of its inputs."""
    w_s, w_t, w_c, _ = consistency_gates(image_embeddings, raw_embeddings, synthetic_embeddings, running_means, MOMENTUM, GAMMA)
    return infonce_loss(image_embeddings, raw_embeddings, logit_scale, w_s * w_t) + infonce_loss(
        image_embeddings, synthetic_embeddings, logit_scale, w_s * w_c
    )


def _inputs(n=8, d=4):
    torch.manual_seed(0)
    images = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    raws = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    synthetics = (raws.detach() + torch.randn(n, d, dtype=torch.float64)).requires_grad_(True)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    running = torch.tensor([0.8, 0.1, -0.1], dtype=torch.float64)
    return images, raws, synthetics, scale, running


def test_gates_match_reference_and_some_samples_are_gated():
    images, raws, synthetics, scale, running = _inputs()
    w_s, w_t, w_c, new_running = consistency_gates(images, raws, synthetics, running, MOMENTUM, GAMMA)
    _, gates, expected_running = reference_alip(images, raws, synthetics, scale, running.tolist())
    torch.testing.assert_close(torch.stack([w_s, w_t, w_c], dim=1), gates)
    torch.testing.assert_close(new_running, expected_running)
    assert (w_s < 1).any() and (w_s == 1).any() and not w_s.requires_grad


def test_alip_loss_and_gradients_match_reference():
    images, raws, synthetics, scale, running = _inputs()
    loss = alip_loss(images, raws, synthetics, scale, running)
    expected, _, _ = reference_alip(images, raws, synthetics, scale, running.tolist())
    torch.testing.assert_close(loss, expected)
    wrt = (images, raws, synthetics, scale)
    for got, want in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(expected, wrt)):
        torch.testing.assert_close(got, want)


def test_alip_ddp_equals_single_process(tmp_path: Path):
    images, raws, synthetics, scale, running = _inputs()
    inputs = {"image_embeddings": images.detach(), "raw_embeddings": raws.detach(), "synthetic_embeddings": synthetics.detach()}
    params = {"logit_scale": scale.detach(), "running_means": running}
    assert_ddp_matches_single_process(alip_loss, inputs, params, tmp_path)
