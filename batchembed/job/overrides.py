"""The command line's changes to a job file: ``--set section.key=value`` and ``--unset section.key``.

A Makefile varies a job without copying it. A mistake in an override is the command line's, not the
job file's: an error about a key that ``--set`` gave names that ``--set`` (and exits as a usage error),
and a key that is not one of the job's is refused with the near match. ``--unset`` takes a key back to
its default (``--unset input.id``: rows get generated ``file:row`` ids again).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from typing import Any

from batchembed.errors import UsageError
from batchembed.suggest import did_you_mean


def known_keys(cls: type, prefix: str = "") -> list[str]:
    """Every ``section.key`` of a job-file dataclass (tables recursed into), in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        hint = _table_type(hints[f.name])
        out += known_keys(hint, key) if hint is not None else [key]
    return out


def _table_type(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None for a plain value."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


def parse_value(text: str) -> Any:
    """An override's value: TOML (numbers, booleans, ``['a','b']``, quoted strings), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], sets: list[str], unsets: list[str], keys: list[str]) -> dict[str, str]:
    """Apply ``--set`` and ``--unset`` to the parsed job file ``raw``; returns {key: what the command line said}
    for blaming errors on it. ``keys``: every key a job file may hold (``known_keys``)."""
    given: dict[str, str] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise UsageError(f"--set expects section.key=value (e.g. --set model.dimensions=256), got {item!r}")
        _check_key(key, "--set " + item, keys)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {item}: {part} is not a table in the job file")
            node = child
        node[leaf] = parse_value(text)
        given[key] = f"--set {item}"
    for key in unsets:
        _check_key(key, f"--unset {key}", keys)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
        given[key] = f"--unset {key}"
    return given


def _check_key(key: str, said: str, keys: list[str]) -> None:
    """Refuse a key no job file may hold, with the near match (or the section's keys)."""
    if key in keys or any(k.startswith(key + ".") for k in keys):
        return
    section = key.split(".")[0]
    near = did_you_mean(key, keys)
    if not near:
        inside = [k.split(".", 1)[1] for k in keys if k.startswith(section + ".")]
        sections = sorted({k.split(".")[0] for k in keys if "." in k})
        near = (
            f"; the keys of [{section}] are {', '.join(inside)}"
            if inside
            else f"; the sections are {', '.join(f'[{s}]' for s in sections)}"
        )
    raise UsageError(f"{said}: {key} is not a job-file key{near}")


def blame(message: str, given: dict[str, str]) -> str | None:
    """What the command line said about the key ``message`` is about (``--set k=v``), or None when the
    message is about a key the command line did not touch (then the job file is to blame)."""
    for key, said in given.items():
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            return said
    return None


def unset_hint(key: str, value: Any) -> str:
    """How to take a key back to its default when ``--set key=false``/``--set key=`` was tried for that."""
    if value is False or value == "":
        return f" (to unset {key} and use its default, give --unset {key})"
    return ""
