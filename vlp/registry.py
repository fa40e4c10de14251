"""Name -> class registries: the only way a YAML file can reach code.

Built-in components are discovered by importing every module of their package
(``vlp.objectives``, ``vlp.encoders``, ...) the first time a registry is read, so
adding a component is one new file: no ``__init__`` has to remember to import it.
A user's own module is imported explicitly through the config's ``plugins`` list.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, reported as one sentence naming the cause and the fix."""


def did_you_mean(word: str, choices: list[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


def listing(choices: list[str], limit: int = 12) -> str:
    """``a, b, c`` — cut after ``limit`` entries so a message stays one readable sentence."""
    shown = ", ".join(choices[:limit])
    return shown + (f", ... ({len(choices) - limit} more)" if len(choices) > limit else "")


class Registry(Generic[T]):
    """A named collection of components of one kind, filled by ``@registry.register(name)``."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            existing = self._entries.get(name)
            if existing is not None and existing is not cls:
                raise ConfigError(
                    f'{self.kind} "{name}" is registered twice ({existing.__module__} and '
                    f"{cls.__module__}); give one of them another name."
                )
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str, where: str = "") -> type[T]:
        self._discover()
        if name not in self._entries:
            location = f" at {where}" if where else ""
            raise ConfigError(
                f'Unknown {self.kind} "{name}"{location}.{did_you_mean(name, self.names())} '
                f"Known: {listing(self.names())}; a component of your own must be registered "
                f"in a module listed under `plugins`."
            )
        return self._entries[name]


IMAGE_ENCODERS: Registry = Registry("image encoder", "vlp.encoders")
TEXT_ENCODERS: Registry = Registry("text encoder", "vlp.encoders")
OBJECTIVES: Registry = Registry("objective", "vlp.objectives")
DATAMODULES: Registry = Registry("datamodule", "vlp.data")
EVALUATIONS: Registry = Registry("evaluation", "vlp.evaluation")
VIEWS: Registry = Registry("view", "vlp.views")


def import_plugins(modules: list[str]) -> None:
    """Import the user's plugin modules so their ``@register`` decorators run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            raise ConfigError(
                f'Plugin module "{name}" listed under `plugins` cannot be imported ({error}); '
                f"make sure it is installed or on PYTHONPATH."
            ) from error
