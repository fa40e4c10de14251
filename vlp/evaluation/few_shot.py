"""Few-shot linear probe: k labelled training images per class, several seeds, mean ± std.

For each k in ``shots`` and each seed, k images per class are drawn from the training
split (every image of a class with fewer), the linear probe is fit on them (CLIP's
search for C, then the refit; the search holds out ``val_fraction`` of the k-shot set,
and falls back to C=1 when that is too small) and scored on the whole test split.
Metrics: ``fewshot/<set>/<k>shot/top1_mean`` and ``_std`` (population std over seeds),
and the same for mean per-class recall.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, embed_images, progress
from vlp.evaluation.classification import classification_metrics
from vlp.evaluation.linear_probe import LinearProbe, class_logits
from vlp.registry import EVALUATIONS


def sample_shots(labels: Tensor, shots: int, seed: int) -> Tensor:
    """Indices of ``shots`` random samples of every class (all of a class with fewer), sorted."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(chosen).sort().values


@EVALUATIONS.register("few_shot_linear_probe")
class FewShotLinearProbe(Evaluation):
    """Mean and std over ``seeds`` of k-shot linear-probe top-1 and mean per-class recall, for each k in ``shots``."""

    every_validation = False  # a C search per seed and shot count: before and after training only

    def __init__(
        self, shots: list[int] = (1, 4, 16), seeds: int = 3, batch_size: int = 256, val_fraction: float = 0.2, max_iter: int = 1000, tol: float = 1e-4
    ) -> None:
        self.shots = list(shots)
        self.seeds = seeds
        self.batch_size = batch_size
        self.probe = LinearProbe(val_fraction=val_fraction, max_iter=max_iter, tol=tol)

    def evaluate_features(self, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, prefix: str) -> dict[str, float]:
        train_x, train_y, test_y = train_x.cpu(), torch.as_tensor(train_y).cpu(), torch.as_tensor(test_y).cpu()
        results: dict[str, float] = {}
        for shots in self.shots:
            runs: list[dict[str, float]] = []
            for seed in range(self.seeds):
                subset = sample_shots(train_y, shots, seed)
                classifier = self.probe.fit(train_x[subset], train_y[subset], seed=seed)
                runs.append(classification_metrics(class_logits(classifier, test_x.cpu(), num_classes), test_y, "", [1]))
            for metric in runs[0]:
                values = torch.tensor([run[metric] for run in runs], dtype=torch.float64)
                name = f"{prefix}/{shots}shot{metric}"
                results[f"{name}_mean"] = values.mean().item()
                results[f"{name}_std"] = values.std(unbiased=False).item()
        return results

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for probe in progress(source.linear_probe_sets(), "few-shot probe"):
            train_x = embed_images(encoder, probe.train_images, self.batch_size)
            test_x = embed_images(encoder, probe.test_images, self.batch_size)
            results.update(self.evaluate_features(train_x, probe.train_labels, test_x, probe.test_labels, len(probe.class_names), f"fewshot/{probe.name}"))
        return results
