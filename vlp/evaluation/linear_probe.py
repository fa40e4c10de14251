"""Linear-probe classification on frozen image features (CLIP, section 3.2 and appendix A.3).

CLIP's protocol: L2-regularised logistic regression fit by scikit-learn's
``LogisticRegression`` (L-BFGS, at most 1,000 iterations), the strength ``C`` chosen on a
held-out part of the training split by a parametric binary search over 1e-6..1e6 that
starts at every second decade and halves the interval around the best value down to 8
steps per decade; the final classifier is refit on the whole training split. The fit is
scikit-learn's; only the search is written here. Features are the model's normalised
``encode_image`` embeddings (CLIP probes the layer before the projection, which the
dual-encoder interface does not expose).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from vlp.data.image_folder import LinearProbeSet
from vlp.evaluation.base import Evaluation, EvaluationSource, embed_images, is_main_rank, progress
from vlp.evaluation.classification import classification_metrics
from vlp.registry import EVALUATIONS

START_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)


def fit_logistic_regression(features: Tensor, labels: Tensor, c: float, max_iter: int = 1000, tol: float = 1e-4) -> LogisticRegression:
    """scikit-learn's L2 logistic regression (L-BFGS; multinomial for three or more classes) in float64.

    Stopping at ``max_iter`` is part of CLIP's protocol (weakly regularised fits of separable
    features reach it), so scikit-learn's convergence warning is silenced.
    """
    classifier = LogisticRegression(C=c, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return classifier.fit(_numpy(features), _numpy(labels))


def _numpy(values: Tensor) -> np.ndarray:
    values = torch.as_tensor(values).detach().cpu()
    return values.double().numpy() if values.is_floating_point() else values.long().numpy()


def class_logits(classifier: LogisticRegression, features: Tensor, num_classes: int) -> Tensor:
    """(N, num_classes) decision scores; classes absent from the fit score -inf, two-class fits score 0 vs the row."""
    scores = torch.from_numpy(classifier.decision_function(_numpy(features)))
    if scores.ndim == 1:
        scores = torch.stack([torch.zeros_like(scores), scores], dim=1)
    logits = torch.full((scores.shape[0], num_classes), float("-inf"), dtype=torch.float64)
    logits[:, torch.from_numpy(classifier.classes_).long()] = scores
    return logits


def select_c(
    features: Tensor, labels: Tensor, val_fraction: float, max_iter: int, tol: float, seed: int, steps_per_decade: int
) -> float:
    """CLIP's parametric binary search for ``C`` by accuracy on a seeded held-out part of the train split.

    Ties go to the stronger regularisation (smaller ``C``). With too few samples to hold
    any out, or a fit part with a single class, scikit-learn's default ``C=1`` is used.
    """
    n_val = round(len(labels) * val_fraction)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit_x, fit_y = features[order[n_val:]], labels[order[n_val:]]
    val_x, val_y = _numpy(features[order[:n_val]]), _numpy(labels[order[:n_val]])
    if n_val == 0 or n_val == len(labels) or len(torch.unique(fit_y)) < 2:
        return 1.0
    accuracy: dict[float, float] = {}

    def score(log10_c: float) -> None:
        if log10_c not in accuracy:
            accuracy[log10_c] = fit_logistic_regression(fit_x, fit_y, 10.0**log10_c, max_iter, tol).score(val_x, val_y)

    def best() -> float:
        return max(accuracy, key=lambda log10_c: (accuracy[log10_c], -log10_c))

    for log10_c in START_LOG10_C:
        score(log10_c)
    step = START_LOG10_C[1] - START_LOG10_C[0]
    while step > 1 / steps_per_decade:
        step /= 2
        centre = best()
        for log10_c in (centre - step, centre + step):
            if START_LOG10_C[0] <= log10_c <= START_LOG10_C[-1]:
                score(log10_c)
    return 10.0 ** best()


@EVALUATIONS.register("linear_probe")
class LinearProbe(Evaluation):
    """Top-1 test accuracy and mean per-class recall of a logistic regression on frozen image embeddings, per set.

    Its search for C fits about 15 regressions, so by default it runs only before and after training.
    """

    every_validation = False

    def __init__(
        self, batch_size: int = 256, val_fraction: float = 0.2, max_iter: int = 1000, tol: float = 1e-4, steps_per_decade: int = 8, seed: int = 0
    ) -> None:
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.tol = tol
        self.steps_per_decade = steps_per_decade
        self.seed = seed

    def fit(self, train_x: Tensor, train_y: Tensor, seed: int | None = None) -> LogisticRegression:
        """CLIP's search for ``C`` on the training features, then the refit on all of them."""
        train_y = torch.as_tensor(train_y).cpu()
        seed = self.seed if seed is None else seed
        c = select_c(train_x.cpu(), train_y, self.val_fraction, self.max_iter, self.tol, seed, self.steps_per_decade)
        return fit_logistic_regression(train_x, train_y, c, self.max_iter, self.tol)

    def evaluate_features(self, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, prefix: str) -> dict[str, float]:
        classifier = self.fit(train_x, train_y)
        return classification_metrics(class_logits(classifier, test_x, num_classes), torch.as_tensor(test_y).cpu(), prefix, [1])

    def evaluate_set(self, encoder, probe: LinearProbeSet) -> dict[str, float]:
        train_x = embed_images(encoder, probe.train_images, self.batch_size)
        test_x = embed_images(encoder, probe.test_images, self.batch_size)
        if not is_main_rank():
            return {}
        return self.evaluate_features(train_x, probe.train_labels, test_x, probe.test_labels, len(probe.class_names), f"linearprobe/{probe.name}")

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for probe in progress(source.linear_probe_sets(), "linear probe"):
            results.update(self.evaluate_set(encoder, probe))
        return results
