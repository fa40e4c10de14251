"""Turn a validated :class:`Experiment` into a datamodule and a LightningModule."""

from __future__ import annotations

import inspect
from typing import Any

import yaml
from torch import nn

from vlp.config.experiment import Component, Experiment
from vlp.config.schema import declared_parameters
from vlp.data.base import ImageTextDataModule
from vlp.model import DualEncoder, VLPModule
from vlp.encoders.weights import read_state_dict
from vlp.needs import ModelInfo
from vlp.registry import ConfigError
from vlp.text.word_tokenizer import build_word_tokenizer, tokenizer_from_json
from vlp.tuning import apply_tuning


def instantiate(component: Component, **injected: Any) -> Any:
    """Build a component with its YAML arguments plus the injected ones it declares."""
    accepted = declared_parameters(component.cls) if inspect.isclass(component.cls) else inspect.signature(component.cls).parameters
    extra = {k: v for k, v in injected.items() if k in accepted}
    return component.cls(**component.params, **extra)


def build_evaluation(component: Component, objectives: dict[str, Any]) -> Any:
    evaluation = instantiate(component, objectives=objectives)
    if component.every_validation is not None:
        evaluation.every_validation = component.every_validation
    return evaluation


def build_datamodule(experiment: Experiment) -> ImageTextDataModule:
    return instantiate(experiment.data)


def build_module(experiment: Experiment, datamodule: ImageTextDataModule, tokenizer_json: str | None = None) -> VLPModule:
    """Build towers, objectives and evaluations; attach the text tokenizer to the datamodule.

    A text tower without a tokenizer of its own gets a word-level vocabulary of the
    datamodule's captions (or, when restoring, the one stored in the checkpoint).
    Objectives are built after the towers, so they receive what they declare of
    :class:`ModelInfo` (widths, vocabulary, special ids, patch grid, the encoder) and
    their modules exist before ``init_from`` loads and before optimizers are made.
    """
    corpus_tokenizer: dict[str, Any] = {}

    def default_tokenizer():
        tokenizer = tokenizer_from_json(tokenizer_json) if tokenizer_json else build_word_tokenizer(datamodule.caption_corpus())
        corpus_tokenizer["json"] = tokenizer.backend_tokenizer.to_str()
        return tokenizer

    image_tower = instantiate(experiment.image_encoder, embed_dim=experiment.embed_dim)
    text_tower = instantiate(experiment.text_encoder, embed_dim=experiment.embed_dim, default_tokenizer=default_tokenizer)
    datamodule.attach_tokenizer(text_tower.tokenize)
    encoder = DualEncoder(image_tower, text_tower)
    info = ModelInfo.of(encoder, experiment.embed_dim).as_dict()
    objectives = {o.name: instantiate(o, **info) for o in experiment.objectives}
    if experiment.init_from is not None:
        load_partial(nn.ModuleDict({"encoder": encoder, "objectives": nn.ModuleDict(objectives)}), experiment.init_from)
    apply_tuning(image_tower, experiment.image_tuning)
    apply_tuning(text_tower, experiment.text_tuning)
    for objective in objectives.values():
        objective.set_trainable(experiment.train_objectives)
    state = {
        "config": yaml.safe_dump(experiment.resolved, sort_keys=False),
        "tokenizer": corpus_tokenizer.get("json"),
    }
    return VLPModule(
        encoder=encoder,
        objectives=objectives,
        weights={o.name: o.weight for o in experiment.objectives},
        active={o.name: o.active for o in experiment.objectives},
        optim=experiment.optim,
        evaluations=[build_evaluation(e, objectives) for e in experiment.evaluations],
        state=state,
        views={name: instantiate(view) for name, view in experiment.views.items()},
    ).train()  # pretrained weights load in eval mode; training needs their dropout (held teachers stay in eval)


def load_partial(module: nn.Module, path: str) -> None:
    """Load a (partial) vlp state dict, e.g. exported heads; every key in it must fit the model."""
    state = read_state_dict(path)
    own = module.state_dict()
    unknown = sorted(k for k in state if k not in own)
    misfit = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unknown or misfit:
        raise ConfigError(
            f"model.init_from {path} does not fit this model (unknown keys: {unknown[:5]}, wrong shapes: {misfit[:5]}); "
            f"check that it was exported from the same architecture."
        )
    module.load_state_dict(state, strict=False)
