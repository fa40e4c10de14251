"""Captioning: BLEU-4 and CIDEr-D of generated captions against each image's reference captions.

Scores come from pycocoevalcap (the COCO caption evaluation code). Its PTB tokenizer
needs Java, so captions are tokenized here the same simple way for candidates and
references: lower case, runs of letters and digits, punctuation dropped.
"""

from __future__ import annotations

import contextlib
import io
import re

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from torch.utils.data import DataLoader

from vlp.evaluation.base import Evaluation, EvaluationSource, RetrievalSet
from vlp.registry import EVALUATIONS, ConfigError


def normalise(caption: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", caption.lower()))


def caption_scores(candidates: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-4, CIDEr-D and the fraction of candidates equal to one of their references."""
    generated = {i: [normalise(c)] for i, c in enumerate(candidates)}
    truth = {i: [normalise(r) for r in refs] for i, refs in enumerate(references)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(truth, generated)
    cider, _ = Cider().compute_score(truth, generated)
    exact = sum(generated[i][0] in truth[i] for i in generated) / max(len(generated), 1)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "exact_match": exact}


def captioning_objective(objectives: dict, name: str | None = None):
    """The trained objective that captions (it owns the decoder): ``name``, else the only one that can."""
    able = {key: o for key, o in objectives.items() if hasattr(o, "caption")}
    if name is not None and name in able:
        return able[name]
    if name is None and len(able) == 1:
        return next(iter(able.values()))
    wanted = f'"{name}"' if name else "exactly one"
    raise ConfigError(
        f"Captioning needs {wanted} objective with a caption decoder among model.objectives "
        f"(captioning ones here: {sorted(able) or 'none'}); add coca or name the one to use."
    )


@EVALUATIONS.register("captioning")
class Captioning(Evaluation):
    """Captions every image of the datamodule's retrieval sets (references: their texts), greedy or beam search.

    ``objective`` names the captioning objective (default: the only one configured).
    """

    def __init__(
        self, objective: str | None = None, beam_size: int = 1, batch_size: int = 128, max_images: int | None = None,
        objectives: dict | None = None,
    ) -> None:
        self.captioner = captioning_objective(objectives or {}, objective)
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.max_images = max_images

    def evaluate_set(self, encoder, dataset: RetrievalSet) -> dict[str, float]:
        count = len(dataset.images) if self.max_images is None else min(self.max_images, len(dataset.images))
        device = next(encoder.parameters()).device
        candidates: list[str] = []
        images = dataset.images[:count] if isinstance(dataset.images, torch.Tensor) else torch.utils.data.Subset(dataset.images, range(count))
        for batch in DataLoader(images, batch_size=self.batch_size):
            candidates += self.captioner.caption(encoder, batch.to(device), beam_size=self.beam_size)
        references = [[dataset.texts[t] for t in dataset.image_to_texts[i]] for i in range(count)]
        return {f"caption/{dataset.name}/{k}": v for k, v in caption_scores(candidates, references).items()}

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for dataset in source.retrieval_sets():
            results.update(self.evaluate_set(encoder, dataset))
        return results
