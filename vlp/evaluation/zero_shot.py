"""Zero-shot classification with prompt ensembles (CLIP, section 3.1.4), descriptions and prompt weighting.

Three ways to build one text embedding per class, each reported under its own name:

- ``templates``: the renormalised mean of the normalised prompt embeddings (CLIP);
  metrics ``zeroshot/<task>/top1``, ``.../mean_per_class_recall``.
- ``descriptions``: the same average over per-class sentences read from a JSON file
  ``{class name: [sentence, ...]}``, the format of CuPL's generated prompts (Pratt et al.,
  2023); metrics ``zeroshot/<task>/descriptions/...``.
- ``zpe``: a weighted template average whose weights come from the unlabelled test images
  (ZPE, Allingham et al., 2023): template p's logits l_p(x) are centred by their mean over
  the images (removing the template's bias towards some classes), its score is the mean
  over images of max_c of the centred logits, and the weights are softmax(score / τ);
  metrics ``zeroshot/<task>/zpe/...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, ZeroShotTask, embed_images, embed_texts, is_main_rank, progress
from vlp.evaluation.classification import classification_metrics
from vlp.registry import EVALUATIONS, ConfigError

Method = Literal["templates", "descriptions", "zpe"]


def prompt_embeddings(encoder, class_names: list[str], templates: list[str], batch_size: int) -> Tensor:
    """(classes, templates, D) normalised embeddings of every template filled with every class name."""
    prompts = [template.format(name) for name in class_names for template in templates]
    return embed_texts(encoder, prompts, batch_size).view(len(class_names), len(templates), -1)


def class_embeddings(encoder, class_names: list[str], templates: list[str], batch_size: int) -> Tensor:
    """One embedding per class: the renormalised mean of its normalised prompt embeddings."""
    return F.normalize(prompt_embeddings(encoder, class_names, templates, batch_size).mean(dim=1), dim=-1)


def description_embeddings(encoder, descriptions: list[list[str]], batch_size: int) -> Tensor:
    """One embedding per class from its own list of sentences (renormalised mean, as for templates)."""
    flat = [sentence for sentences in descriptions for sentence in sentences]
    embeddings = embed_texts(encoder, flat, batch_size)
    sizes = [len(sentences) for sentences in descriptions]
    return F.normalize(torch.stack([chunk.mean(dim=0) for chunk in embeddings.split(sizes)]), dim=-1)


def zpe_weights(images: Tensor, prompts: Tensor, temperature: float) -> Tensor:
    """ZPE's template weights from unlabelled images (N, D) and prompt embeddings (classes, templates, D)."""
    logits = torch.einsum("nd,ctd->tnc", images, prompts.to(images.dtype))  # per template: (N, classes)
    centred = logits - logits.mean(dim=1, keepdim=True)
    scores = centred.max(dim=2).values.mean(dim=1)
    return torch.softmax(scores / temperature, dim=0)


def read_descriptions(path: str) -> dict[str, list[str]]:
    """A JSON object mapping each class name to a non-empty list of sentences."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Zero-shot descriptions file {path} does not exist; point `descriptions` at a JSON file of class -> sentences.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"Zero-shot descriptions file {path} is not valid JSON ({error.msg}, line {error.lineno}); fix the file.") from error
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ConfigError(f"Zero-shot descriptions file {path} must map each class name to a non-empty list of sentences.")
    return data


@EVALUATIONS.register("zero_shot")
class ZeroShotClassification(Evaluation):
    """Top-k accuracy and mean per-class recall per task; top-k is reported only for k below the number of classes."""

    def __init__(
        self,
        ks: list[int] = (1, 5),
        batch_size: int = 256,
        methods: list[Method] = ("templates",),
        descriptions: str | None = None,
        zpe_temperature: float = 0.01,
    ) -> None:
        unknown = [m for m in methods if m not in ("templates", "descriptions", "zpe")]
        if unknown or not methods:
            raise ConfigError(f"Zero-shot methods {list(methods)} are not known; use templates, descriptions and/or zpe.")
        if ("descriptions" in methods) != (descriptions is not None):
            raise ConfigError("The zero-shot `descriptions` method needs a `descriptions` JSON file and the file needs the method; set both or neither.")
        self.ks = list(ks)
        self.batch_size = batch_size
        self.methods = list(methods)
        self.descriptions = read_descriptions(descriptions) if descriptions is not None else None
        self.descriptions_path = descriptions
        self.zpe_temperature = zpe_temperature

    def class_descriptions(self, task: ZeroShotTask) -> list[list[str]] | None:
        """The task's classes' sentences; ``None`` when the file describes none of them (another task's file)."""
        present = [name in self.descriptions for name in task.class_names]
        if not any(present):
            return None
        if not all(present):
            missing = [n for n, p in zip(task.class_names, present) if not p]
            raise ConfigError(
                f"Zero-shot descriptions {self.descriptions_path} lack classes {missing} of task {task.name}; add sentences for them."
            )
        return [self.descriptions[name] for name in task.class_names]

    def logits(self, encoder, task: ZeroShotTask) -> dict[str, Tensor]:
        """Image-class cosine similarities per method (key "" for the plain template average)."""
        images = embed_images(encoder, task.images, self.batch_size)
        results = {}
        if "templates" in self.methods or "zpe" in self.methods:
            prompts = prompt_embeddings(encoder, task.class_names, task.templates, self.batch_size).to(images.device)
            if "templates" in self.methods:
                results[""] = images @ F.normalize(prompts.mean(dim=1), dim=-1).T
            if "zpe" in self.methods:
                weights = zpe_weights(images, prompts, self.zpe_temperature)
                results["zpe/"] = images @ F.normalize(torch.einsum("t,ctd->cd", weights, prompts), dim=-1).T
        if "descriptions" in self.methods:
            sentences = self.class_descriptions(task)
            if sentences is not None:
                results["descriptions/"] = images @ description_embeddings(encoder, sentences, self.batch_size).to(images.device).T
        return results

    def evaluate_task(self, encoder, task: ZeroShotTask) -> dict[str, float]:
        logits = self.logits(encoder, task)  # every rank embeds its share; rank 0 scores
        if not is_main_rank():
            return {}
        results: dict[str, float] = {}
        for method, values in logits.items():
            results.update(classification_metrics(values, task.labels, f"zeroshot/{task.name}/{method}".rstrip("/"), self.ks))
        return results

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for task in progress(source.zero_shot_tasks(), "zero-shot"):
            results.update(self.evaluate_task(encoder, task))
        return results
