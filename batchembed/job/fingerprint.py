"""The job's fingerprint, made in one place: the settings its vectors (or scores) depend on.

An output records the fingerprint of the job that wrote it (``_manifest.json``); ``run`` refuses to resume
an output of another fingerprint, and ``status``, ``verify`` and ``plan`` ask the same question through
the same function, so no two commands can disagree about whose output it is. It is the task's settings
(``Task.fingerprint``) and the model's (``ResolvedJob.fingerprint``); the input files are the job's work,
not part of it. Its keys and values are part of every existing output: changing one makes every output
refuse to resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchembed.job.resolved import ResolvedJob


class HasFingerprint(Protocol):
    """A task: the part of the fingerprint it owns."""

    def fingerprint(self) -> dict[str, Any]: ...


def job_fingerprint(resolved: ResolvedJob, task: HasFingerprint) -> dict[str, Any]:
    """The fingerprint ``run`` records for a job resolved as ``resolved`` and computed by ``task``."""
    return {**task.fingerprint(), **resolved.fingerprint()}


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Stable sha256 of a fingerprint dict."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints ("model.name: 'a' -> 'b'"; a key without a value
    reads "not set", never Python's None)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {_value(old.get(key))} -> {_value(new.get(key))}")
    return changes


def _value(value: Any) -> str:
    """A setting as a person reads it: "not set", true/false, 256, 'text'."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
