"""``status`` and ``verify`` for the job's sinks: read both sides, never write either.

``status`` shows each sink's held version against the table's. ``verify`` compares each sink with
the table's current version: the row count, the set of ids (an order-independent digest: the
wrapping sum of a 64-bit hash of each id's text form, computed alike on both sides), and the kept
values and vectors of a sample of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from batchembed.errors import BatchEmbedError, redact
from batchembed.job.config import JobConfig
from batchembed.output.publish.stores import delta_storage_options
from batchembed.output.store import output_location
from batchembed.sinks import changes
from batchembed.sinks.sync import columns_of, sinks_of

#: Rows whose kept values and vectors ``verify`` compares, per sink.
SAMPLE_ROWS = 32


def status(job: JobConfig) -> list[dict[str, Any]]:
    """Each sink: its name, the version it holds, the table's version, and its state
    (current, behind, empty, unreachable)."""
    if not job.sink:
        return []
    where = output_location(job)
    now = changes.current(where, delta_storage_options(where))
    version = None if now is None else now[1]
    out = []
    for sink in sinks_of(job):
        entry: dict[str, Any] = {"sink": sink.name, "table_version": version}
        try:
            held = sink.held()
        except BatchEmbedError as exc:
            out.append({**entry, "held_version": None, "state": "unreachable", "reason": redact(str(exc))})
            continue
        if held.version is None:
            state = "empty"
        elif now is not None and held.table_id == now[0] and held.version == version:
            state = "current"
        else:
            state = "behind"
        out.append({**entry, "held_version": held.version, "state": state})
    return out


def status_lines(entries: list[dict[str, Any]]) -> list[str]:
    """``status``'s lines for the sinks."""
    lines = []
    for e in entries:
        table = e["table_version"]
        where = "no Delta table yet" if table is None else f"the table is at version {table}"
        if e["state"] == "unreachable":
            lines.append(f"sink:     {e['sink']}: unreachable ({e['reason']}); {where}")
        elif e["state"] == "empty":
            hint = "" if table is None else " (`batchembed sync`)"
            lines.append(f"sink:     {e['sink']}: holds nothing yet; {where}{hint}")
        else:
            note = "current" if e["state"] == "current" else "behind: `batchembed sync` catches it up"
            lines.append(f"sink:     {e['sink']}: version {e['held_version']} of the table's {table} ({note})")
    return lines


def id_digest(ids: list[str] | pl.Series) -> int:
    """An order-independent digest of a set of ids given as text: the wrapping sum of their 64-bit hashes."""
    series = pl.Series("id", ids, dtype=pl.String)
    hashes = series.hash(seed=0).to_numpy().astype(np.uint64)
    return int(np.sum(hashes, dtype=np.uint64))


def problems(job: JobConfig) -> list[str]:
    """Where each sink differs from the table's current version (empty when every sink equals it)."""
    if not job.sink:
        return []
    where = output_location(job)
    now = changes.current(where, delta_storage_options(where))
    if now is None:
        return []
    cols = columns_of(job)
    files = sorted(now[2])
    ids, sample = _table_side(where, files, cols)
    digest = id_digest(ids)
    found = []
    for sink in sinks_of(job):
        try:
            found += _compare(sink, now, cols, len(ids), digest, sample)
        except BatchEmbedError as exc:
            found.append(f"{sink.name}: cannot be compared: {redact(str(exc))}")
    return found


def _table_side(where, files: list[str], cols: changes.Shape) -> tuple[list[str], dict[str, tuple]]:
    """Every id of the table as text, and a sample of rows (id text -> (kept values, vector))."""
    ids: list[str] = []
    sample: dict[str, tuple] = {}
    every = max(1, len(files) // 4)
    for i, name in enumerate(files):
        for batch in changes.read_batches(where, name, [cols.id]):
            ids.extend(batch.column(0).cast("string").to_pylist())
        if i % every == 0 and len(sample) < SAMPLE_ROWS:
            for batch in changes.read_batches(where, name, cols.columns):
                for row in batch.slice(0, SAMPLE_ROWS // 4).to_pylist():
                    vector = row[cols.vector]
                    sample[str(row[cols.id])] = (
                        row[cols.id],
                        [row[c] for c in cols.kept],
                        None if vector is None else np.asarray(vector, np.float32),
                    )
                break
    return ids, sample


def _compare(sink, now, cols: changes.Shape, rows: int, digest: int, sample: dict[str, tuple]) -> list[str]:
    found = []
    held = sink.held()
    if held.table_id != now[0] or held.version != now[1]:
        found.append(f"{sink.name}: holds version {held.version} of the table, which is at version {now[1]}")
    count, ids = sink.count_and_ids(cols.id)
    if count != rows:
        found.append(f"{sink.name}: {count:,} rows, the table has {rows:,}")
    if id_digest(ids) != digest:
        found.append(f"{sink.name}: holds another set of ids than the table (the digests of the ids differ)")
    got = sink.rows(cols, [v[0] for v in sample.values()])
    for key, (_, kept, vector) in sample.items():
        if key not in got:
            found.append(f"{sink.name}: row {key!r} of the table is missing")
            continue
        their_kept, their_vector = got[key]
        if their_kept != kept:
            found.append(f"{sink.name}: row {key!r} holds {their_kept} where the table holds {kept}")
        if (vector is None) != (their_vector is None) or (
            vector is not None and not np.array_equal(vector, their_vector)
        ):
            found.append(f"{sink.name}: row {key!r} holds another vector than the table")
    return found


def verify_lines(job: JobConfig) -> tuple[list[str], list[str]]:
    """(OK lines, problems) for ``verify``."""
    if not job.sink:
        return [], []
    found = problems(job)
    if found:
        return [], found
    return [f"OK: {s.name} equals the table (rows, ids, sampled vectors)" for s in sinks_of(job)], []
