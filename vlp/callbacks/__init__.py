"""Lightning callbacks and loggers named in YAML: ``trainer.callbacks`` and ``trainer.logger``.

Each entry is ``{class: <class>, <argument>: <value>, ...}`` (``class``, not ``name``: loggers
take a ``name`` argument of their own). A class is one exported by
``lightning.pytorch.callbacks`` (``EarlyStopping``, ``LearningRateMonitor``, ...) or
``lightning.pytorch.loggers`` (``WandbLogger``, ``MLFlowLogger``, ...), or one a plugin
module registered with ``@CALLBACKS.register(name)`` / ``@LOGGERS.register(name)``. No
dotted path is ever imported from YAML. Arguments are checked against the class's
constructor like every other component's, before anything is built.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Callable

import lightning.pytorch.callbacks as lightning_callbacks
import lightning.pytorch.loggers as lightning_loggers

from vlp.config.schema import check_values
from vlp.registry import ConfigError, Registry, did_you_mean

CALLBACKS: Registry = Registry("callback", "vlp.callbacks")
LOGGERS: Registry = Registry("logger", "vlp.callbacks")
SECTIONS = {"callbacks": (CALLBACKS, lightning_callbacks), "logger": (LOGGERS, lightning_loggers)}


def component_class(section: str, name: Any, path: str) -> type:
    """The class a ``trainer.callbacks`` / ``trainer.logger`` entry names: a registered one, else Lightning's own."""
    registry, module = SECTIONS[section]
    if isinstance(name, str) and name in registry.names():
        return registry.get(name)
    built_in = _exported_classes(module)
    if isinstance(name, str) and name in built_in:
        return built_in[name]
    known = sorted(set(registry.names()) | set(built_in))
    registry_name = "CALLBACKS" if section == "callbacks" else "LOGGERS"
    raise ConfigError(
        f'Unknown {registry.kind} "{name}" at {path}.{did_you_mean(str(name), known)} Known: {", ".join(known)}; '
        f"a class of your own must be registered with @{registry_name}.register in a module listed under `plugins`."
    )


def _exported_classes(module: ModuleType) -> dict[str, type]:
    return {name: getattr(module, name) for name in getattr(module, "__all__", []) if isinstance(getattr(module, name, None), type)}


def check_entries(trainer: dict[str, Any], where: Callable[[str], str]) -> None:
    """Validate ``trainer.callbacks`` and ``trainer.logger`` lists (names and constructor arguments)."""
    for section in SECTIONS:
        entries = trainer.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "class" in e for e in entries):
            raise ConfigError(
                f"`trainer.{section}` in {where(f'trainer.{section}')} must be a list of entries with a `class`, "
                f"e.g. [{{class: {'EarlyStopping, monitor: val/loss' if section == 'callbacks' else 'MLFlowLogger, experiment_name: vlp'}}}]."
            )
        for index, entry in enumerate(entries):
            path = f"trainer.{section}[{index}]"
            arguments = {k: v for k, v in entry.items() if k != "class"}
            if section == "logger":  # vlp fills a logger's save_dir with the run directory
                arguments.setdefault("save_dir", "<run directory>")
            check_values(arguments, component_class(section, entry["class"], path), path, where)


def build_entries(trainer: dict[str, Any], section: str, **injected: Any) -> list[Any]:
    """Instantiate a validated section; ``injected`` fills arguments the entry leaves out (e.g. a logger's save_dir)."""
    built = []
    for index, entry in enumerate(trainer.get(section) or []):
        cls = component_class(section, entry["class"], f"trainer.{section}[{index}]")
        arguments = {k: v for k, v in entry.items() if k != "class"}
        accepted = set(inspect.signature(cls.__init__).parameters)
        extra = {k: v for k, v in injected.items() if k in accepted and k not in arguments}
        built.append(cls(**arguments, **extra))
    return built

