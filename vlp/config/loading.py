"""Read experiment YAML: ``base:`` inheritance, ``key=value`` overrides, ``${...}`` interpolation.

Besides the merged config, loading records which file (or the command line) set each
key, so validation errors can name the file to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlp.registry import ConfigError

COMMAND_LINE = "the command line"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
Origins = dict[str, str]


def flatten_keys(node: Any, prefix: str = "") -> list[str]:
    """All key paths of a nested container, with list items as ``key[i]``."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key in node:
            paths += flatten_keys(node[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            paths += flatten_keys(item, f"{prefix}[{index}]")
    return paths


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"Experiment file {path} does not exist; check the path (experiments live under experiments/).")
    try:
        config = OmegaConf.load(path)
    except Exception as error:
        raise ConfigError(f"{path} is not valid YAML ({error}); fix the syntax at the position shown.") from error
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level, not a {type(config).__name__}.")
    return config


def _load_with_bases(path: Path, origins: Origins, seen: tuple[Path, ...]) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path} inherits from itself through `base:`; remove the cycle.")
    config = _read_yaml(path)
    bases = config.pop("base", None) or []
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, _load_with_bases(path.parent / base, origins, seen + (path,)))
    # OmegaConf replaces lists wholesale; forget origins under any key this file redefines.
    for key in flatten_keys(config):
        for stale in [p for p in origins if p.startswith(key + "[")]:
            del origins[stale]
        origins[key] = str(path)
    _drop_replaced_components(merged, config)
    return OmegaConf.merge(merged, config)


def _drop_replaced_components(parent: DictConfig, child: DictConfig) -> None:
    """Where the child picks another component (a different ``name``), forget the parent's arguments.

    Without this, switching ``data.name`` from shapes to digits would keep shapes-only keys.
    """
    for key in child:
        if key not in parent or not isinstance(child[key], DictConfig) or not isinstance(parent[key], DictConfig):
            continue
        old, new = parent[key].get("name"), child[key].get("name")
        if old is not None and new is not None and old != new:
            parent[key] = {}
        else:
            _drop_replaced_components(parent[key], child[key])


def load_yaml(path: str | Path, overrides: list[str] = ()) -> tuple[dict[str, Any], Origins]:
    """Merged, interpolated config as plain containers, plus the origin of every key."""
    origins: Origins = {}
    config = _load_with_bases(Path(path), origins, ())
    return apply_overrides(config, list(overrides), origins)


def apply_overrides(config: DictConfig, overrides: list[str], origins: Origins | None = None) -> tuple[dict[str, Any], Origins]:
    """Apply ``key=value`` overrides (list items by index: ``model.objectives.0.weight=2``), then resolve."""
    origins = {} if origins is None else origins
    for override in overrides:
        key, value = _parse_override(override)
        parent_key, _, leaf = key.rpartition(".")
        if leaf == "name" and parent_key and OmegaConf.select(config, key) not in (None, value):
            OmegaConf.update(config, parent_key, {}, merge=False)  # another component: drop the old arguments
        try:
            # A mapping value replaces the whole mapping; dotted keys change single entries.
            OmegaConf.update(config, key, value, merge=False, force_add=True)
        except (OmegaConfBaseException, TypeError, ValueError, IndexError) as error:
            raise ConfigError(f'Override "{override}" does not fit the config ({error}); check the key path.') from error
        origins[_bracketed(key)] = COMMAND_LINE
        for path in flatten_keys(value, _bracketed(key)):
            origins[path] = COMMAND_LINE
    _follow_interpolations(config, origins)
    try:
        container = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        raise UnresolvedReference(
            f"Interpolation failed: {str(error).splitlines()[0]}; check the ${{...}} reference.",
            OmegaConf.to_container(config, resolve=False), origins,
        ) from error
    return container, origins


class UnresolvedReference(ConfigError):
    """A ``${...}`` reference names a missing key; carries the unresolved config so a likelier cause can be named."""

    def __init__(self, message: str, unresolved: dict[str, Any], origins: Origins) -> None:
        super().__init__(message)
        self.unresolved, self.origins = unresolved, origins


def _follow_interpolations(config: DictConfig, origins: Origins) -> None:
    """A key written as ``${other.key}`` is set wherever ``other.key`` was: an error in it blames the true source."""
    raw = OmegaConf.to_container(config, resolve=False)
    for path in flatten_keys(raw):
        value = _at(raw, path)
        match = INTERPOLATION.fullmatch(value) if isinstance(value, str) else None
        if match:
            target = _bracketed(match.group(1))
            if origin_of(target, origins, "") == COMMAND_LINE:
                origins[path] = COMMAND_LINE


def _at(node: Any, path: str) -> Any:
    for part in path.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
    return node


def _parse_override(override: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed by OmegaConf's grammar (numbers like 1e-3, lists, mappings)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f'Override "{override}" is not of the form key=value; write e.g. optim.lr=1e-3.')
    try:
        parsed = OmegaConf.from_dotlist([f"value={raw}"])
        return key.strip(), OmegaConf.to_container(parsed, resolve=False)["value"]
    except Exception as error:  # OmegaConf's grammar errors and the YAML parser's (e.g. an unclosed "[1,")
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(
            f'Override "{override}" on the command line has a value that cannot be parsed ({reason}); '
            f"write a YAML value (close brackets, quote text with [ , : or spaces)."
        ) from error


def _bracketed(dotted: str) -> str:
    """``model.objectives.0.name`` -> ``model.objectives[0].name`` (the form used in messages)."""
    out = ""
    for part in dotted.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def origin_of(path: str, origins: Origins, default: str) -> str:
    """The file that set ``path`` or its nearest ancestor."""
    while path:
        if path in origins:
            return origins[path]
        path = path[: max(path.rfind("."), path.rfind("["), 0)]
    return default
