"""The batch tier's record that its plan is complete: for which job, which inputs, and what each unit waits for.

Planning prepares every row of the job's open units (texts, token counts, the cache's hits, dedup), which
means reading and hashing the whole input. Next to hours of batches that is cheap once, but a pipeline
running ``run --no-wait`` every 10 minutes would pay it at every poll. So once a plan is complete it is
recorded in ``_batch/job.plan.json`` (``layout.BATCH_PLAN``):

* its *signature*: the job's fingerprint and input settings, the refresh generation, every input file's
  identity (size and mtime, or size and ETag) and the failed rows it planned to buy again;
* the files that run read and checked (identity and row count: the batch tier's ``Placement.seen_inputs``,
  so the next run neither opens them for their row counts nor checks their columns and ids again) and the
  copied columns' types it settled from them (the shards a later run writes get the same);
* what each unit waits for (the pieces holding its items), which is all the writing pass needs.

A run whose signature is the record's skips planning and only polls the open batches: its cost is the
ledger's small files and one status request per open batch. Anything else (an input added, changed or
removed, another job, new failed rows to retry, ``--restart``) plans again and records the new plan; the
record is dropped before planning starts, so a plan stopped halfway is never taken for a complete one.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pyarrow as pa

from batchembed.input.identity import file_identity
from batchembed.job.fingerprint import fingerprint_hash
from batchembed.output.layout import BATCH_PLAN
from batchembed.output.store.base import OutputStore
from batchembed.run.placement import SeenInputs


def identity(src: Any) -> dict:
    """An input file's identity, as the runner compares it (``SeenInputs.covers``)."""
    return file_identity(src.size, src.mtime_ns, src.etag)


def input_settings(job: Any) -> str:
    """A digest of the job's ``[input]`` section: the checks a file passed hold for these settings only."""
    return hashlib.sha256(repr(job.input).encode()).hexdigest()


def signature(fingerprint: str, job: Any, generation: int, sources: list, retry_units: list) -> dict[str, Any]:
    """What a plan was made from: a run with the same signature has nothing new to plan."""
    return {
        "fingerprint": fingerprint,
        "input": input_settings(job),
        "generation": generation,
        "files": {src.name: identity(src) for src in sources},
        "retries": [[failures, src.name, len(rows)] for failures, src, rows in retry_units],
    }


def read(store: OutputStore) -> dict[str, Any] | None:
    """The record as saved, None when there is none (or it cannot be read: planned again)."""
    raw = store.read_bytes(BATCH_PLAN)
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
        return doc if isinstance(doc, dict) and {"signature", "files", "types", "waits"} <= doc.keys() else None
    except orjson.JSONDecodeError:
        return None


def save(
    store: OutputStore, sign: dict[str, Any], checked: list, types: dict[str, pa.DataType], waits: dict[str, set[str]]
) -> None:
    """Record a complete plan: its signature, the files its run read and checked, the types it settled for
    the copied columns, each unit's pieces."""
    schema = pa.schema([pa.field(name, kind) for name, kind in types.items()])
    doc = {
        "signature": sign,
        "files": {src.name: [identity(src), src.rows] for src in checked},
        "types": base64.b64encode(schema.serialize().to_pybytes()).decode(),
        "waits": {unit: sorted(pieces) for unit, pieces in waits.items()},
    }
    store.write_bytes(BATCH_PLAN, orjson.dumps(doc))


def drop(store: OutputStore) -> None:
    """Forget the record (planning starts: until it completes, no plan is complete)."""
    if store.exists(BATCH_PLAN):
        store.delete(BATCH_PLAN)


def waits_for(store: OutputStore, sign: dict[str, Any]) -> dict[str, set[str]] | None:
    """What each unit waits for, when the recorded plan was made from ``sign``; else None (plan again)."""
    doc = read(store)
    if doc is None or doc["signature"] != sign:
        return None
    return {unit: set(pieces) for unit, pieces in doc["waits"].items()}


def seen_inputs(runner: Any) -> SeenInputs:
    """The batch tier's ``Placement.seen_inputs``: the files the recorded plan's run read and checked, when
    the record is this job's (same fingerprint and input settings, no ``--restart``)."""
    if runner.restart:
        return SeenInputs()
    try:
        doc = read(runner.output.store)
    except Exception:  # read before the output is taken, as a hint: a missing or foreign output has none
        return SeenInputs()
    if doc is None:
        return SeenInputs()
    sign = doc["signature"]
    if sign.get("fingerprint") != fingerprint_hash(runner.fingerprint()) or sign.get("input") != input_settings(
        runner.job
    ):
        return SeenInputs()
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc.get("types", ""))))
    files = {name: (known, rows) for name, (known, rows) in doc["files"].items()}
    return SeenInputs(files, {f.name: f.type for f in schema})
