"""Check config values against the declarations they will be passed to.

A component's constructor signature (or a dataclass) is its schema: its parameter
names are the allowed keys, its type hints the allowed types, parameters without a
default are required. Nothing is duplicated in a separate schema file.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Literal, Union

from vlp.registry import ConfigError, did_you_mean, listing

NoneType = type(None)


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type hint. Unknown or class-typed hints accept anything."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if annotation is NoneType:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(matches(v, args[1]) for v in value.values())
    return True


def declared_parameters(target: Callable) -> dict[str, tuple[Any, bool]]:
    """``{name: (type hint, required)}`` of a class constructor, function or dataclass.

    A constructor that forwards ``**kwargs`` to its base class also accepts the base
    constructor's parameters, so subclasses declare only what they add.
    """
    function = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(function)
    parameters = {}
    forwards = False
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind == parameter.VAR_KEYWORD:
            forwards = True
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        parameters[name] = (hints.get(name, Any), parameter.default is inspect.Parameter.empty)
    if forwards and inspect.isclass(target):
        base = next((b for b in target.__mro__[1:] if "__init__" in vars(b)), None)
        if base is not None and base is not object:
            for name, spec in declared_parameters(base).items():
                parameters.setdefault(name, spec)
    return parameters


def check_values(
    values: dict[str, Any],
    target: Callable,
    path: str,
    where: Callable[[str], str],
    injected: tuple[str, ...] = (),
    reserved: dict[str, str] | None = None,
) -> None:
    """Raise ConfigError for the first unknown key, wrong type or missing required value."""
    declared = {k: v for k, v in declared_parameters(target).items() if k not in injected}
    for key, value in values.items():
        key_path = f"{path}.{key}" if path else key
        if reserved and key in reserved:
            raise ConfigError(f"`{key_path}` in {where(key_path)} cannot be set here: {reserved[key]}.")
        if key not in declared:
            raise ConfigError(
                f"Unknown key `{key_path}` in {where(key_path)}.{did_you_mean(key, list(declared))} "
                f"Allowed keys: {listing(sorted(declared))}."
            )
        annotation, _ = declared[key]
        if not matches(value, annotation):
            raise ConfigError(
                f"`{key_path}` in {where(key_path)} is {value!r} ({type(value).__name__}) but must be "
                f"{type_name(annotation)}; fix the value."
            )
    for key, (_, required) in declared.items():
        if required and key not in values:
            key_path = f"{path}.{key}" if path else key
            raise ConfigError(f"Missing required key `{key_path}` in {where(path)}; add it.")


def build_dataclass(cls: type, values: dict[str, Any], path: str, where: Callable[[str], str]) -> Any:
    """Validate ``values`` against dataclass ``cls`` and construct it."""
    check_values(values, cls, path, where)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in fields})
