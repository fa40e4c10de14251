"""Turn a validated :class:`Experiment` into a datamodule and a LightningModule."""

from __future__ import annotations

import inspect
from typing import Any

import yaml

from vlp.config.experiment import Component, Experiment
from vlp.data.base import ImageTextDataModule
from vlp.model import DualEncoder, VLPModule
from vlp.text.word_tokenizer import build_word_tokenizer, tokenizer_from_json


def instantiate(component: Component, **injected: Any) -> Any:
    """Build a component with its YAML arguments plus the injected ones it declares."""
    accepted = inspect.signature(component.cls.__init__).parameters
    extra = {k: v for k, v in injected.items() if k in accepted}
    return component.cls(**component.params, **extra)


def build_datamodule(experiment: Experiment) -> ImageTextDataModule:
    return instantiate(experiment.data)


def build_module(experiment: Experiment, datamodule: ImageTextDataModule, tokenizer_json: str | None = None) -> VLPModule:
    """Build towers, objectives and evaluations; attach the text tokenizer to the datamodule.

    A text tower without a tokenizer of its own gets a word-level vocabulary of the
    datamodule's captions (or, when restoring, the one stored in the checkpoint).
    """
    corpus_tokenizer: dict[str, Any] = {}

    def default_tokenizer():
        tokenizer = tokenizer_from_json(tokenizer_json) if tokenizer_json else build_word_tokenizer(datamodule.caption_corpus())
        corpus_tokenizer["json"] = tokenizer.backend_tokenizer.to_str()
        return tokenizer

    image_tower = instantiate(experiment.image_encoder, embed_dim=experiment.embed_dim)
    text_tower = instantiate(experiment.text_encoder, embed_dim=experiment.embed_dim, default_tokenizer=default_tokenizer)
    objectives = {o.name: instantiate(o, embed_dim=experiment.embed_dim) for o in experiment.objectives}
    datamodule.attach_tokenizer(text_tower.tokenize)
    state = {
        "config": yaml.safe_dump(experiment.resolved, sort_keys=False),
        "tokenizer": corpus_tokenizer.get("json"),
    }
    return VLPModule(
        encoder=DualEncoder(image_tower, text_tower),
        objectives=objectives,
        weights={o.name: o.weight for o in experiment.objectives},
        optim=experiment.optim,
        evaluations=[instantiate(e) for e in experiment.evaluations],
        state=state,
    )
