"""Linear probe: the fit against a closed-form optimum, CLIP's strength search, and the embedded data's probe sets."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlp.data.digits import DigitsDataModule
from vlp.data.image_folder import LinearProbeSet
from vlp.data.shapes import SHAPES, ShapesDataModule, generate
from vlp.evaluation.linear_probe import class_logits, fit_logistic_regression, select_c
from vlp.registry import EVALUATIONS

sklearn_linear = pytest.importorskip("sklearn.linear_model")

TIGHT = 1e-10  # gradient tolerance for both fits, far below scikit-learn's default 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """L-BFGS on small problems is thousands of tiny ops; on busy shared cores, intra-op threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(num_classes: int, n: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters: a well-posed, non-separable classification problem."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return torch.randn(num_classes, dim, generator=g)[labels] + spread * torch.randn(n, dim, generator=g), labels


def sklearn_fit(x: torch.Tensor, y: torch.Tensor, c: float):
    return sklearn_linear.LogisticRegression(C=c, tol=TIGHT, max_iter=10_000).fit(x.double().numpy(), y.numpy())


def symmetric_logistic_weight(c: float, n: int, a: float) -> float:
    """The optimum w of n/2 points at +a (label 1) and n/2 at -a (label 0).

    By symmetry the unpenalised bias is 0, and the gradient of
    C * sum(log-loss) + w^2 / 2 vanishes where w = C n a (1 - sigmoid(w a)): a scalar
    equation with one root, solved here by bisection.
    """
    low, high = 0.0, c * n * a
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if mid < c * n * a * (1 - 1 / (1 + np.exp(-mid * a))) else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("c", [0.01, 0.3, 5.0])
def test_fit_has_the_closed_form_optimum_of_a_symmetric_binary_problem(c: float) -> None:
    n, a = 10, 0.7
    x = torch.tensor([[a]] * (n // 2) + [[-a]] * (n // 2), dtype=torch.float64)
    y = torch.tensor([1] * (n // 2) + [0] * (n // 2))
    classifier = fit_logistic_regression(x, y, c, tol=TIGHT)
    assert classifier.coef_.shape == (1, 1)
    assert classifier.coef_[0, 0] == pytest.approx(symmetric_logistic_weight(c, n, a), rel=1e-6)
    assert abs(classifier.intercept_[0]) < 1e-6
    logits = class_logits(classifier, x, 2)  # two classes: class 0 scores 0, class 1 the decision function
    assert torch.equal(logits.argmax(1), y) and torch.all(logits[:, 0] == 0)


def test_class_logits_place_absent_classes_at_minus_infinity() -> None:
    x, y = blobs(3, 60, 4, 1.0, seed=3)
    y = torch.where(y == 1, 2, y)  # class 1 never appears in the training labels
    logits = class_logits(fit_logistic_regression(x, y, 1.0), x, 4)
    assert logits.shape == (60, 4) and torch.isinf(logits[:, [1, 3]]).all() and torch.isfinite(logits[:, [0, 2]]).all()


def clip_search_reference(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> float:
    """CLIP's search written out directly, with scikit-learn fits and no warm starts."""
    n_val = round(len(y) * val_fraction)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fit, val = order[n_val:], order[:n_val]

    @functools.cache
    def accuracy(log10_c: float) -> float:
        return sklearn_fit(x[fit], y[fit], 10.0**log10_c).score(x[val].double().numpy(), y[val].numpy())

    visited = {-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0}
    for step in (1.0, 0.5, 0.25, 0.125):
        centre = max(visited, key=lambda e: (accuracy(e), -e))
        visited |= {e for e in (centre - step, centre + step) if -6 <= e <= 6}
    return 10.0 ** max(visited, key=lambda e: (accuracy(e), -e))


def test_strength_search_replays_clips_binary_search() -> None:
    x, y = blobs(3, 150, 5, 2.5, seed=7)
    assert select_c(x, y, val_fraction=0.3, max_iter=1000, tol=TIGHT, seed=1, steps_per_decade=8) == clip_search_reference(x, y, 0.3, 1)


class TableEncoder(nn.Module):
    """Embeds image i as row i of a table, normalised."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def encode_image(self, index: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.table[index.long()], dim=-1)


def test_linear_probe_matches_scikit_learn_pipeline_under_inference_mode() -> None:
    x, y = blobs(3, 200, 5, 2.0, seed=11)
    train, test = torch.arange(150), torch.arange(150, 200)
    source = SimpleNamespace(linear_probe_sets=lambda: [LinearProbeSet("toy", ["a", "b", "c"], train, y[train], test, y[test])])
    evaluation = EVALUATIONS.get("linear_probe")(tol=TIGHT, batch_size=32, seed=2)
    with torch.inference_mode():  # as in Lightning's validation loop
        got = evaluation(TableEncoder(x), source)

    features = F.normalize(x, dim=-1)
    c = clip_search_reference(features[train], y[train], 0.2, seed=2)
    predicted = torch.from_numpy(sklearn_fit(features[train], y[train], c).predict(features[test].double().numpy()))
    expected = (predicted == y[test]).double().mean().item()
    recalls = [(predicted[y[test] == k] == k).double().mean().item() for k in range(3)]
    assert got == {"linearprobe/toy/top1": expected, "linearprobe/toy/mean_per_class_recall": pytest.approx(sum(recalls) / 3, abs=1e-12)}
    assert expected > 0.6  # informative features: well above chance (1/3)


class PooledPixels(nn.Module):
    """A fixed image encoder: 2x2 average-pooled pixels, normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.adaptive_avg_pool2d(images, 2).flatten(1), dim=-1)


def test_shapes_probe_is_single_object_shapes_and_runs() -> None:
    dm = ShapesDataModule(image_size=16, train_size=240, val_size=80, seed=3)
    dm.setup("fit")
    (probe,) = dm.linear_probe_sets()
    # Labels from the generator's scenes, not from the captions the datamodule reads them from.
    _, train_scenes = generate(240, 16, 3, False, 0.5)
    assert probe.train_labels.tolist() == [SHAPES.index(s[0].shape) for s in train_scenes if len(s) == 1]
    assert probe.test_labels.tolist() == [SHAPES.index(s[0].shape) for s in dm.val_scenes if len(s) == 1]
    assert len(probe.test_images) == len(probe.test_labels) and probe.test_images.max() <= 1
    got = EVALUATIONS.get("linear_probe")(max_iter=20)(PooledPixels(), dm)
    assert set(got) == {"linearprobe/shape/top1", "linearprobe/shape/mean_per_class_recall"} and 0 <= got["linearprobe/shape/top1"] <= 1


def test_digits_probe_labels_are_the_training_digits() -> None:
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(image_size=8, seed=5)
    dm.setup("fit")
    (probe,) = dm.linear_probe_sets()
    targets = load_digits().target
    train = np.random.default_rng(5).permutation(len(targets))[int(len(targets) * 0.2) :]
    assert probe.train_labels.tolist() == targets[train].tolist()
    assert probe.test_labels.tolist() == dm.val_labels.tolist() and len(probe.test_images) == len(dm.val_set)
    assert probe.train_images.dtype == torch.float32 and probe.train_images.max() == 1.0

