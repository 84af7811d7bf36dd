"""A TOML table onto a frozen dataclass, field by field: unknown keys and wrong types are ``ConfigError``s
naming the key (``limits.concurrency``); ``--set section.key=value`` overrides applied to the raw table
first. Generic: it knows the job's sections only through the dataclasses it is given (``config``)."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from batchembed.errors import ConfigError, UsageError


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as TOML, else taken as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key:
        raise UsageError(f"--set expects section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {key}: {part} is not a table")
        node = child
    node[leaf] = value


def from_mapping(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types by name."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'job'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        where = f"[{prefix}]" if prefix else "the job file"
        raise ConfigError(f"unknown key {_join(prefix, unknown[0])} in {where}; known keys: {', '.join(sorted(known))}")
    values = {}
    for name, value in raw.items():
        key = _join(prefix, name)
        hint = _optional_dataclass(hints[name])
        if dataclasses.is_dataclass(hint):
            values[name] = from_mapping(hint, value, key)
        elif _table_list(hint):  # [[sink]]: an array of tables
            if not isinstance(value, list):
                raise ConfigError(f"{key} must be an array of tables, written [[{key}]]")
            values[name] = tuple(from_mapping(_table_list(hint), v, f"{key}[{i}]") for i, v in enumerate(value))
        else:
            values[name] = _coerce(hint, value, key)
    return cls(**values)


def _optional_dataclass(hint: Any) -> Any:
    """``X | None`` where X is a dataclass -> X (a present table builds X); anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return hint


def _table_list(hint: Any) -> Any:
    """``tuple[X, ...]`` where X is a dataclass -> X; anything else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise (
            errors[-1]
            if len(options) == 2 and type(None) in options
            else ConfigError(f"{key}: {value!r} is not valid here")
        )
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected nothing, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{key} must be a table, like {{ input_type = "passage" }}; got {type(value).__name__}')
        return dict(value)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {item_type.__name__}, got {type(value).__name__}")
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got a boolean")
    if isinstance(value, hint):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(f"{key} must be {names.get(hint, hint.__name__)}, got {type(value).__name__} {value!r}")
