"""A TOML table onto a frozen dataclass, field by field: unknown keys (with the near match) and wrong types
are ``ConfigError``s naming the key (``limits.concurrency``); ``--set``/``--unset`` are applied to the raw
table first (``overrides``). Generic: it knows the job's sections only through the dataclasses it is given
(``config``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from batchembed.errors import ConfigError
from batchembed.suggest import did_you_mean


def from_mapping(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types by name."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'job'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(_unknown(prefix, unknown[0], known))
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


def _unknown(prefix: str, name: str, known: set[str]) -> str:
    """The message for a key (or a section) the job file may not hold: the near match, then the choices."""
    if prefix:
        return f"unknown key {prefix}.{name} in [{prefix}]{did_you_mean(name, known)} (keys of [{prefix}]: " + (
            ", ".join(sorted(known)) + '; every key: README.md, "A job file, field by field")'
        )
    sections = sorted(known - {"kind"})  # ``kind`` (embed | rerank) is read from [rerank]'s presence
    return f"unknown section [{name}]{did_you_mean(name, sections)} (sections: {', '.join(f'[{s}]' for s in sections)})"


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
        if len(options) == 2 and type(None) in options:  # X | None given a value: what X says of it
            raise errors[options.index(next(o for o in options if o is not type(None)))]
        raise ConfigError(f"{key}: {value!r} is not valid here")
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
