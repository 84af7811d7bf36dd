"""The job's fingerprint, made in one place: the settings its vectors (or scores) depend on.

An output records the fingerprint of the job that wrote it (``_manifest.json``); ``run`` refuses to resume
an output of another fingerprint, and ``status``, ``verify`` and ``plan`` ask the same question through
the same function, so no two commands can disagree about whose output it is. It is the task's settings
(``Task.fingerprint``) and the model's (``ResolvedJob.fingerprint``); the input files are the job's work,
not part of it. Its keys and values are part of every existing output: changing one makes every output
refuse to resume.

Some of its settings do not change a vector nor which rows exist: ``RESHAPING`` (``input.keep``, the
columns copied next to the vector). They stay in the recorded fingerprint (so existing outputs keep
their hash) but are left out of what makes another job (``same_job``, ``describe_changes``); a change
of them is found by comparing the recorded value with the job's (``reshaped``), and a run rewrites the
shards from the vectors the output already holds (``output/input_diff.py``). Rerank jobs are the
exception: their scores are not reused by a refresh, so for them every setting stays the job.
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


#: Recorded settings that do not make another job: a change rewrites the shards, buying nothing.
RESHAPING = ("input.keep",)


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Stable sha256 of a fingerprint dict."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _reshapes(fp: dict[str, Any]) -> bool:
    """Whether a job of this fingerprint can rewrite its shards from its own output (embed jobs)."""
    return not any(key.startswith("rerank.") for key in fp)


def job_settings(fp: dict[str, Any]) -> dict[str, Any]:
    """The settings that make the job: the fingerprint without ``RESHAPING`` (for an embed job)."""
    return {k: v for k, v in fp.items() if k not in RESHAPING} if _reshapes(fp) else dict(fp)


def same_job(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an output recorded with ``recorded`` belongs to the job of fingerprint ``wanted``."""
    return fingerprint_hash(job_settings(recorded)) == fingerprint_hash(job_settings(wanted))


def reshaped(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The ``RESHAPING`` settings of the same job that differ (the output's shards must be rewritten)."""
    if not same_job(recorded, wanted) or not _reshapes(wanted):
        return []
    return [key for key in RESHAPING if recorded.get(key) != wanted.get(key)]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints' job settings ("model.name: 'a' -> 'b'"; a key
    without a value reads "not set", never Python's None)."""
    old, new = job_settings(old), job_settings(new)
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
