"""The experiment: the YAML's top level, validated into typed parts before anything is built.

YAML layout (it mirrors the object tree)::

    name, seed, run_dir, plugins, evaluate_before, vars
    model: {embed_dim, image_encoder: {name, ...}, text_encoder: {name, ...},
            objectives: [{name, weight, ...}, ...],
            views: {view_name: {name, ...}},              # extra named views, e.g. patch_drop
            tuning: {image: {mode, ...}, text: {...}},   # vlp.tuning: full / locked / lora
            init_from}                                    # safetensors of (some) module weights
    data: {name, ...}
    optim: {...}            # vlp.optim.OptimConfig
    trainer: {...}          # keyword arguments of lightning.Trainer
    checkpoint: {...}       # vlp.checkpointing.CheckpointConfig: when last.ckpt is written
    eval: [{name, ...}, ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from omegaconf import OmegaConf

from vlp.config.checks import check_finite, check_ranges
from vlp.config.loading import UnresolvedReference, apply_overrides, load_yaml, origin_of
from vlp.config.schema import build_dataclass, check_values, matches
from vlp.checkpointing import CheckpointConfig
from vlp.optim import OptimConfig
from vlp.tuning import TowerTuning, parse_tuning
from vlp.needs import OBJECTIVE_INJECTED
from vlp.registry import DATAMODULES, EVALUATIONS, IMAGE_ENCODERS, OBJECTIVES, TEXT_ENCODERS, VIEWS, ConfigError, Registry, import_plugins

INJECTED = ("embed_dim", "default_tokenizer")  # passed by the builder to towers, never YAML keys
TRAINER_RESERVED = {
    "default_root_dir": "vlp sets it to the run directory; use run_dir",
    "enable_checkpointing": "vlp always checkpoints; choose when in the `checkpoint` section",
}


@dataclass
class RunSettings:
    """Top-level scalars of an experiment."""

    name: str = "experiment"
    seed: int = 0
    run_dir: str | None = None
    plugins: list[str] = field(default_factory=list)
    evaluate_before: bool = False
    vars: dict[str, Any] = field(default_factory=dict)  # free-form values for ${vars.name} interpolation


@dataclass
class ModelSection:
    embed_dim: int
    image_encoder: dict[str, Any]
    text_encoder: dict[str, Any]
    objectives: list[dict[str, Any]]
    tuning: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    views: dict[str, Any] = field(default_factory=dict)


@dataclass
class Component:
    """A registered class and the YAML arguments it will be built with."""

    cls: type
    params: dict[str, Any]
    path: str
    weight: float = 1.0
    active: tuple[float, float] = (0.0, 1.0)  # objectives only: the span of training progress it runs in
    every_validation: bool | None = None  # evaluations only: None keeps the class's default

    @property
    def name(self) -> str:
        return self.cls.registry_name


@dataclass
class Experiment:
    run: RunSettings
    embed_dim: int
    image_encoder: Component
    text_encoder: Component
    objectives: list[Component]
    image_tuning: TowerTuning
    text_tuning: TowerTuning
    train_objectives: bool
    init_from: str | None
    data: Component
    optim: OptimConfig
    trainer: dict[str, Any]
    checkpoint: CheckpointConfig
    evaluations: list[Component]
    resolved: dict[str, Any]
    source: str
    views: dict[str, Component] = field(default_factory=dict)


class _Where:
    def __init__(self, origins: dict[str, str], source: str) -> None:
        self.origins, self.source = origins, source

    def __call__(self, path: str) -> str:
        return origin_of(path, self.origins, self.source)


def _component(
    values: Any, registry: Registry, path: str, where: _Where, with_weight: bool = False, injected: tuple[str, ...] = INJECTED
) -> Component:
    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError(f"`{path}` in {where(path)} must be a mapping with a `name` key choosing the {registry.kind}.")
    params = dict(values)
    name = params.pop("name")
    weight = params.pop("weight", 1.0) if with_weight else 1.0
    if not matches(weight, float):
        raise ConfigError(f"`{path}.weight` in {where(path)} is {weight!r} but must be a number.")
    active = _active_span(params.pop("active", [0.0, 1.0]) if with_weight else [0.0, 1.0], path, where)
    cls = registry.get(str(name), where=f"`{path}.name` in {where(path + '.name')}")
    check_values(params, cls, path, where, injected=injected)
    validate = getattr(cls, "validate_params", None)  # a component's check of its free-form mappings
    if validate is not None:
        validate(params, path, where)
    return Component(cls, params, path, float(weight), active)


def _evaluation(values: Any, path: str, where: _Where) -> Component:
    """An ``eval`` entry: a registered evaluation plus the optional ``every_validation`` switch."""
    params = dict(values) if isinstance(values, dict) else values
    every_validation = params.pop("every_validation", None) if isinstance(params, dict) else None
    if every_validation is not None and not isinstance(every_validation, bool):
        raise ConfigError(f"`{path}.every_validation` in {where(path)} is {every_validation!r} but must be true or false.")
    component = _component(params, EVALUATIONS, path, where, injected=("objectives",))
    component.every_validation = every_validation
    return component


def _active_span(span: Any, path: str, where: _Where) -> tuple[float, float]:
    """``active: [start, end]``: fractions of training progress between which an objective runs."""
    if (
        not isinstance(span, (list, tuple))
        or len(span) != 2
        or not all(matches(v, float) for v in span)
        or not 0.0 <= float(span[0]) < float(span[1]) <= 1.0
    ):
        raise ConfigError(
            f"`{path}.active` in {where(path + '.active')} is {span!r} but must be [start, end] with "
            f"0 <= start < end <= 1 (fractions of training), e.g. [0.8, 1.0] for the last 20%."
        )
    return float(span[0]), float(span[1])


def _check_scheduled_objectives_under_ddp(objectives: list[Component], trainer: dict[str, Any], where: _Where) -> None:
    """A paused objective leaves its parameters without gradients, which plain DDP refuses mid-run."""
    scheduled = [o.path for o in objectives if o.active != (0.0, 1.0)]
    if scheduled and str(trainer.get("strategy", "auto")) in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        raise ConfigError(
            f"{scheduled[0]} runs only part of training (`active`), so some steps leave its parameters without "
            f"gradients, which trainer.strategy={trainer['strategy']} in {where('trainer.strategy')} refuses; "
            f"use trainer.strategy=ddp_find_unused_parameters_true."
        )


def parse_experiment(config: dict[str, Any], origins: dict[str, str], source: str) -> Experiment:
    """Validate a merged config (plugins are imported first, so they can register components)."""
    where = _Where(origins, source)
    sections = {"model", "data", "optim", "trainer", "checkpoint", "eval"}
    top = {k: v for k, v in config.items() if k not in sections}
    for section in sections:
        if section in config and section not in ("eval",) and not isinstance(config[section], dict):
            raise ConfigError(f"`{section}` in {where(section)} must be a mapping of keys.")
    run = build_dataclass(RunSettings, top, "", where)
    import_plugins(run.plugins)
    check_finite(config, where)
    check_ranges(config, where)

    if "model" not in config:
        raise ConfigError(f"Missing required section `model` in {source}; add model.image_encoder, text_encoder and objectives.")
    model = build_dataclass(ModelSection, config["model"], "model", where)
    if not model.objectives:
        raise ConfigError(f"`model.objectives` in {where('model.objectives')} is empty; list at least one objective.")
    objectives = [
        _component(o, OBJECTIVES, f"model.objectives[{i}]", where, with_weight=True, injected=OBJECTIVE_INJECTED)
        for i, o in enumerate(model.objectives)
    ]
    names = [o.name for o in objectives]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ConfigError(f"Objective(s) {sorted(duplicated)} listed twice in {where('model.objectives')}; merge the entries.")
    if "data" not in config:
        raise ConfigError(f"Missing required section `data` in {source}; add data.name (e.g. shapes).")
    trainer = dict(config.get("trainer") or {})
    check_values({k: v for k, v in trainer.items() if k not in ("callbacks", "logger")}, L.Trainer, "trainer", where, reserved=TRAINER_RESERVED)
    _check_scheduled_objectives_under_ddp(objectives, trainer, where)
    from vlp.callbacks import check_entries  # callbacks and loggers: named entries, added to vlp's own

    check_entries(trainer, where)
    evaluations = config.get("eval", [{"name": "zero_shot"}, {"name": "retrieval"}]) or []
    if not isinstance(evaluations, list):
        raise ConfigError(f"`eval` in {where('eval')} must be a list of evaluations, e.g. [{{name: zero_shot}}].")
    image_tuning, text_tuning, train_objectives = parse_tuning(model.tuning, where)
    return Experiment(
        run=run,
        image_tuning=image_tuning,
        text_tuning=text_tuning,
        train_objectives=train_objectives,
        init_from=model.init_from,
        embed_dim=model.embed_dim,
        image_encoder=_component(model.image_encoder, IMAGE_ENCODERS, "model.image_encoder", where),
        text_encoder=_component(model.text_encoder, TEXT_ENCODERS, "model.text_encoder", where),
        objectives=objectives,
        data=_component(config["data"], DATAMODULES, "data", where),
        optim=build_dataclass(OptimConfig, config.get("optim") or {}, "optim", where),
        trainer=trainer,
        checkpoint=build_dataclass(CheckpointConfig, config.get("checkpoint") or {}, "checkpoint", where),
        evaluations=[_evaluation(e, f"eval[{i}]", where) for i, e in enumerate(evaluations)],
        resolved=config,
        source=source,
        views={name: _component(v, VIEWS, f"model.views.{name}", where) for name, v in model.views.items()},
    )


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Load, merge, interpolate and validate an experiment file with ``key=value`` overrides."""
    try:
        config, origins = load_yaml(path, list(overrides))
    except UnresolvedReference as error:
        _check_component_names(error.unresolved, _Where(error.origins, str(Path(path))))
        raise
    return parse_experiment(config, origins, str(Path(path)))


def _check_component_names(config: dict[str, Any], where: _Where) -> None:
    """Name an unknown component first: choosing another component drops the old one's keys, so the
    references to them fail too, but the unknown name is the cause to report."""
    plugins = config.get("plugins") or []
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        import_plugins(plugins)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    places: list[tuple[str, Any, Registry]] = [
        ("model.image_encoder", model.get("image_encoder"), IMAGE_ENCODERS),
        ("model.text_encoder", model.get("text_encoder"), TEXT_ENCODERS),
        ("data", config.get("data"), DATAMODULES),
    ]
    for key, registry in (("objectives", OBJECTIVES),):
        places += [(f"model.{key}[{i}]", item, registry) for i, item in enumerate(model.get(key) or [])]
    places += [(f"eval[{i}]", item, EVALUATIONS) for i, item in enumerate(config.get("eval") or [])]
    for path, node, registry in places:
        name = node.get("name") if isinstance(node, dict) else None
        if isinstance(name, str) and "${" not in name:
            registry.get(name, where=f"`{path}.name` in {where(path + '.name')}")


def experiment_from_resolved(config: dict[str, Any], overrides: list[str] = (), source: str = "the checkpoint") -> Experiment:
    """Rebuild an experiment from a resolved config stored in a checkpoint, with overrides."""
    merged, origins = apply_overrides(OmegaConf.create(config), list(overrides))
    return parse_experiment(merged, origins, source)
