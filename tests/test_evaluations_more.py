"""kNN, few-shot probe, mean per-class recall and zero-shot prompt methods against direct computations."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from tests.test_evaluation import TableEncoder
from vlp.data.image_folder import LinearProbeSet
from vlp.evaluation.base import ZeroShotTask
from vlp.evaluation.classification import mean_per_class_recall
from vlp.evaluation.few_shot import sample_shots
from vlp.registry import EVALUATIONS, ConfigError


def test_mean_per_class_recall_equals_scikit_learn_balanced_accuracy():
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(50, dtype=torch.long), torch.randint(1, 4, (20,), generator=generator)])  # imbalanced
    predictions = torch.where(torch.rand(70, generator=generator) < 0.7, labels, torch.randint(0, 5, (70,), generator=generator))
    expected = balanced_accuracy_score(labels.numpy(), predictions.numpy())
    assert mean_per_class_recall(predictions, labels, 5) == pytest.approx(expected, abs=1e-12)


def probe_source(seed: int, n_train: int = 90, n_test: int = 40, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 6, generator=generator)
    labels = torch.randint(0, classes, (n_train + n_test,), generator=generator)
    table = centres[labels] + 0.9 * torch.randn(n_train + n_test, 6, generator=generator)
    train, test = torch.arange(n_train), torch.arange(n_train, n_train + n_test)
    probe = LinearProbeSet("toy", [f"c{k}" for k in range(classes)], train, labels[train], test, labels[test])
    return TableEncoder(table, {}), SimpleNamespace(linear_probe_sets=lambda: [probe]), table, labels, train, test


def test_knn_is_dinos_temperature_weighted_vote():
    encoder, source, table, labels, train, test = probe_source(1, classes=6)
    got = EVALUATIONS.get("knn")(k=7, temperature=0.1, chunk_size=16)(encoder, source)
    features = F.normalize(table.double(), dim=-1).numpy()
    predictions, top5 = [], []
    for q in test.tolist():
        similarity = features[train.numpy()] @ features[q]
        nearest = np.argsort(-similarity, kind="stable")[:7]
        votes = np.zeros(6)
        for j in nearest:
            votes[labels[j]] += np.exp(similarity[j] / 0.1)
        predictions.append(int(np.argmax(votes)))
        top5.append(int(labels[q]) in np.argsort(-votes, kind="stable")[:5].tolist())
    truth = labels[test].numpy()
    assert got["knn/toy/top1"] == pytest.approx(float(np.mean(np.array(predictions) == truth)), abs=1e-12)
    assert got["knn/toy/top5"] == pytest.approx(float(np.mean(top5)), abs=1e-12)
    assert got["knn/toy/mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(truth, predictions), abs=1e-12)
    assert 1 / 6 < got["knn/toy/top1"] < 1


def test_sample_shots_takes_k_per_class_and_all_of_a_smaller_class():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 6)
    chosen = sample_shots(labels, 4, seed=3)
    assert torch.bincount(labels[chosen]).tolist() == [4, 2, 4]
    assert not torch.equal(chosen, sample_shots(labels, 4, seed=4))  # seeds draw different subsets


def test_few_shot_probe_reports_mean_and_std_over_seeds_of_k_shot_fits():
    encoder, source, table, labels, train, test = probe_source(2)
    got = EVALUATIONS.get("few_shot_linear_probe")(shots=[2, 8], seeds=3)(encoder, source)
    probe = EVALUATIONS.get("linear_probe")()
    features = F.normalize(table, dim=-1)
    for shots in (2, 8):
        accuracies, recalls = [], []
        for seed in range(3):
            subset = train[sample_shots(labels[train], shots, seed)]
            probe.seed = seed
            metrics = probe.evaluate_features(features[subset], labels[subset], features[test], labels[test], 3, "p")
            accuracies.append(metrics["p/top1"])
            recalls.append(metrics["p/mean_per_class_recall"])
        assert got[f"fewshot/toy/{shots}shot/top1_mean"] == pytest.approx(np.mean(accuracies), abs=1e-12)
        assert got[f"fewshot/toy/{shots}shot/top1_std"] == pytest.approx(np.std(accuracies), abs=1e-12)
        assert got[f"fewshot/toy/{shots}shot/mean_per_class_recall_mean"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert len(got) == 8


def zero_shot_fixture(seed: int = 4):
    generator = torch.Generator().manual_seed(seed)
    classes, templates = ["cat", "dog", "eel"], ["a {}", "the {}", "my {}"]
    text_table = {t.format(c): torch.randn(5, generator=generator) for c in classes for t in templates}
    descriptions = {c: [f"{c} described {i}" for i in range(1 + k)] for k, c in enumerate(classes)}
    text_table |= {s: torch.randn(5, generator=generator) for sentences in descriptions.values() for s in sentences}
    labels = torch.randint(0, 3, (30,), generator=generator)
    # Images lean towards their class's "the" prompt, so that template carries the signal.
    image_table = torch.stack([text_table[f"the {classes[y]}"] for y in labels]) + 1.2 * torch.randn(30, 5, generator=generator)
    task = ZeroShotTask("toy", classes, templates, torch.arange(30), labels)
    return TableEncoder(image_table, text_table), task, descriptions, image_table, text_table


def test_zero_shot_descriptions_and_zpe_weighting_match_their_definitions(tmp_path):
    encoder, task, descriptions, image_table, text_table = zero_shot_fixture()
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(descriptions | {"unrelated": ["x"]}))
    evaluation = EVALUATIONS.get("zero_shot")(methods=["templates", "descriptions", "zpe"], descriptions=str(path), zpe_temperature=0.05)
    got = evaluation.evaluate_task(encoder, task)

    images = F.normalize(image_table.double(), dim=-1)
    unit = {t: F.normalize(v.double(), dim=0) for t, v in text_table.items()}
    prompts = torch.stack([torch.stack([unit[t.format(c)] for t in task.templates]) for c in task.class_names])  # (C, T, D)
    # ZPE written out per template: centre each class's logit over the images, max over classes, mean over images.
    scores = []
    for p in range(len(task.templates)):
        logits = images @ prompts[:, p].T
        scores.append((logits - logits.mean(0)).max(1).values.mean())
    weights = torch.softmax(torch.stack(scores) / 0.05, dim=0)
    classifiers = {
        "": F.normalize(prompts.mean(1), dim=-1),
        "zpe/": F.normalize((weights[None, :, None] * prompts).sum(1), dim=-1),
        "descriptions/": F.normalize(torch.stack([torch.stack([unit[s] for s in descriptions[c]]).mean(0) for c in task.class_names]), dim=-1),
    }
    expected = {}
    for method, classifier in classifiers.items():
        predictions = (images @ classifier.T).argmax(1)
        expected[f"zeroshot/toy/{method}top1"] = (predictions == task.labels).double().mean().item()
        expected[f"zeroshot/toy/{method}mean_per_class_recall"] = balanced_accuracy_score(task.labels.numpy(), predictions.numpy())
    assert got == pytest.approx(expected, abs=1e-12)
    assert weights.argmax().item() == 1  # the informative "the {}" template gets the largest weight


def test_zero_shot_descriptions_that_miss_a_class_are_a_config_error(tmp_path):
    encoder, task, descriptions, *_ = zero_shot_fixture()
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"cat": ["a cat"], "dog": ["a dog"]}))
    with pytest.raises(ConfigError, match="eel"):
        EVALUATIONS.get("zero_shot")(methods=["descriptions"], descriptions=str(path)).evaluate_task(encoder, task)
    with pytest.raises(ConfigError, match="descriptions"):
        EVALUATIONS.get("zero_shot")(methods=["descriptions"])
