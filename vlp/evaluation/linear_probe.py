"""Linear-probe classification on frozen image features (CLIP, section 3.2 and appendix A.3).

CLIP's protocol: L2-regularised logistic regression fit with L-BFGS (scikit-learn's
``LogisticRegression``, at most 1,000 iterations), the strength chosen on a held-out part
of the training split by a parametric binary search over 1e-6..1e6 that starts at every
second decade and halves the interval around the best value down to 8 steps per decade;
the final classifier is refit on the whole training split. The fit here has the same
objective and stopping rule in torch, so evaluation needs no scikit-learn: for three or more classes
softmax regression with one weight row per class, for two classes a single logistic
row, as scikit-learn does. Features are the model's normalised ``encode_image``
embeddings (CLIP probes the layer before the projection, which the dual-encoder
interface does not expose).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.data.image_folder import LinearProbeSet
from vlp.evaluation.base import Evaluation, EvaluationSource, embed_images, is_main_rank
from vlp.registry import EVALUATIONS

START_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)


def logits_of(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(N, K) class logits; a single row (two classes) scores class 1 against class 0."""
    logits = features @ weight.T + bias
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if weight.shape[0] == 1 else logits


def objective(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, c: float) -> Tensor:
    """scikit-learn's ``C * sum(cross-entropy) + ||W||^2 / 2`` divided by ``C * N`` (same minimiser)."""
    n = features.shape[0]
    return F.cross_entropy(logits_of(features, weight, bias), labels) + weight.pow(2).sum() / (2 * c * n)


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Weight (K or 1, D) and bias minimising :func:`objective`, by full-batch L-BFGS in float64 on CPU.

    ``c``, ``max_iter`` and ``tol`` are scikit-learn's: ``C`` (inverse regularisation
    strength; the bias is not penalised), and stopping once every gradient entry of the
    objective is at most ``tol``. ``init`` warm-starts from another fit (the sweep's neighbour).
    Runs with gradients even when called under ``no_grad`` or ``inference_mode``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = features.detach().to("cpu", torch.float64).clone()
        y = labels.detach().to("cpu", torch.long).clone()
        rows = 1 if num_classes == 2 else num_classes
        weight = torch.zeros(rows, x.shape[1], dtype=torch.float64) if init is None else init[0].clone()
        bias = torch.zeros(rows, dtype=torch.float64) if init is None else init[1].clone()
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = objective(x, y, weight, bias, c)
            loss.backward()
            return loss

        optimizer.step(closure)
    return weight.detach(), bias.detach()


def accuracy(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> float:
    predictions = logits_of(features.to("cpu", torch.float64), weight, bias).argmax(dim=1)
    return (predictions == labels.cpu()).double().mean().item()


def select_c(
    features: Tensor, labels: Tensor, num_classes: int, val_fraction: float, max_iter: int, tol: float, seed: int, steps_per_decade: int
) -> float:
    """CLIP's parametric binary search for ``C`` by accuracy on a seeded held-out part of the train split.

    Ties go to the stronger regularisation (smaller ``C``). With too few samples to hold
    any out, scikit-learn's default ``C=1`` is used.
    """
    n_val = round(len(labels) * val_fraction)
    if n_val == 0 or n_val == len(labels):
        return 1.0
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit_x, fit_y = features[order[n_val:]], labels[order[n_val:]]
    val_x, val_y = features[order[:n_val]], labels[order[:n_val]]
    scores: dict[float, tuple[float, tuple[Tensor, Tensor]]] = {}

    def score(log10_c: float, init: tuple[Tensor, Tensor] | None) -> None:
        if log10_c not in scores:
            params = fit_logistic_regression(fit_x, fit_y, num_classes, 10.0**log10_c, max_iter, tol, init)
            scores[log10_c] = accuracy(val_x, val_y, *params), params

    def best() -> float:
        return max(scores, key=lambda log10_c: (scores[log10_c][0], -log10_c))

    init = None
    for log10_c in START_LOG10_C:  # increasing C: each fit warm-starts from the more regularised one
        score(log10_c, init)
        init = scores[log10_c][1]
    step = START_LOG10_C[1] - START_LOG10_C[0]
    while step > 1 / steps_per_decade:
        step /= 2
        centre = best()
        for log10_c in (centre - step, centre + step):
            if START_LOG10_C[0] <= log10_c <= START_LOG10_C[-1]:
                score(log10_c, scores[centre][1])
    return 10.0 ** best()


@EVALUATIONS.register("linear_probe")
class LinearProbe(Evaluation):
    """Top-1 test accuracy of a logistic regression on frozen image embeddings, per linear-probe set."""

    def __init__(
        self, batch_size: int = 256, val_fraction: float = 0.2, max_iter: int = 1000, tol: float = 1e-4, steps_per_decade: int = 8, seed: int = 0
    ) -> None:
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.tol = tol
        self.steps_per_decade = steps_per_decade
        self.seed = seed

    def evaluate_features(self, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int) -> float:
        train_x = train_x.to("cpu", torch.float64)
        train_y = torch.as_tensor(train_y).cpu()
        c = select_c(train_x, train_y, num_classes, self.val_fraction, self.max_iter, self.tol, self.seed, self.steps_per_decade)
        params = fit_logistic_regression(train_x, train_y, num_classes, c, self.max_iter, self.tol)
        return accuracy(test_x, torch.as_tensor(test_y), *params)

    def evaluate_set(self, encoder, probe: LinearProbeSet) -> dict[str, float]:
        train_x = embed_images(encoder, probe.train_images, self.batch_size)
        test_x = embed_images(encoder, probe.test_images, self.batch_size)
        if not is_main_rank():
            return {}
        top1 = self.evaluate_features(train_x, probe.train_labels, test_x, probe.test_labels, len(probe.class_names))
        return {f"linearprobe/{probe.name}/top1": top1}

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for probe in source.linear_probe_sets():
            results.update(self.evaluate_set(encoder, probe))
        return results
