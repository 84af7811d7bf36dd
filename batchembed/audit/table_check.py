"""What ``verify`` and ``status`` say about the output's Delta table: read, never written.

The table must be what batchembed published, whatever the output's state (complete or not): a log
that can be read, no rows changed by others, exactly the files the manifest says (its shards, or the
files others compacted some of them into, which must then hold exactly those shards' rows), and every
file with the table's own column types.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.input.row_ids import id_column_name, id_text
from batchembed.output.publish.delta import table_files, table_schema_json
from batchembed.output.publish.files import delta_types, read_arrow_schema
from batchembed.output.publish.state import BEHIND, CURRENT, DAMAGED, FOREIGN, MAINTAINED, MISSING, TableState
from batchembed.output.restore import shard_ids
from batchembed.output.shared_table import table_state
from batchembed.output.table_view import table_view

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.job.config import JobConfig
    from batchembed.output.manifest import Manifest
    from batchembed.output.store.base import OutputStore


def read_state(store: OutputStore, manifest: Manifest) -> TableState | str:
    """The table's state, or why it cannot be read (a listing or a read that failed)."""
    try:
        return table_state(store, manifest)
    except OutputError as exc:
        return str(exc)


def describe(state: TableState | str) -> str:
    """``status``'s line about the table."""
    if isinstance(state, str):
        return f"cannot be read: {state}"
    if state.kind == CURRENT:
        return f"Delta table at version {state.latest}, as batchembed published it"
    if state.kind == MAINTAINED:
        taken = "; ".join(state.taken)
        return f"Delta table at version {state.latest}, maintained by others since ({taken}); rows unchanged"
    if state.kind in (MISSING, BEHIND):
        return f"{state.problem}: `run` rebuilds it from the manifest"
    if state.kind in (DAMAGED, FOREIGN):
        return f"{state.problem}: `run` refuses it (see `verify`; --rebuild-table rebuilds it from the manifest)"
    return "no Delta table yet (published when the first run completes)"


def sound(state: TableState | str) -> bool:
    """Whether the table is what batchembed published (maintained by others without a row changed counts)."""
    return not isinstance(state, str) and state.kind in (CURRENT, MAINTAINED)


def compacted_missing(store: OutputStore, state: TableState | str) -> set[str]:
    """Shards whose rows files others compacted hold, and whose own file is gone (vacuumed)."""
    if isinstance(state, str):
        return set()
    return {name for name in state.covered() if not store.exists(name)}


def table_problems(
    store: OutputStore, manifest: Manifest, job: JobConfig, sources: dict[str, SourceFile], state: TableState | str
) -> list[str]:
    """Where the table is not what batchembed published (empty when it is), for ``verify``."""
    if isinstance(state, str):
        return [f"Delta table: {state}"]
    if state.kind == DAMAGED:
        return [
            f"Delta table: {state.problem}: run `batchembed run JOB --rebuild-table` to rebuild it from the manifest"
        ]
    if state.kind == FOREIGN:
        return [f"Delta table: {state.problem}: it no longer equals the inputs (undo that change, or --rebuild-table)"]
    if state.kind in (MISSING, BEHIND):
        return [f"Delta table: {state.problem}: run `batchembed run JOB` to rebuild it from the manifest"]
    if state.kind not in (CURRENT, MAINTAINED):
        return []  # nothing published yet
    now = copy.copy(manifest)
    now.adopted = [g.to_json() for g in state.groups]
    expected, _releasing = table_view(now)
    have = table_files(store.where) or {}
    at = f"the Delta table (version {state.latest})"
    problems: list[str] = []
    if manifest.complete and not manifest.retiring:
        want = {f.name: f.size for f in expected}
        problems += [f"{n} is in the output but not in {at}" for n in sorted(want.keys() - have.keys())]
        problems += [f"{n} is in {at} but not in the output" for n in sorted(have.keys() - want.keys())]
        problems += [
            f"{n}: {have[n]} bytes in {at}, {want[n]} in the output"
            for n in sorted(want.keys() & have.keys())
            if want[n] != have[n]
        ]
    else:  # a refresh in progress: the table is the last published one, every file of it batchembed's or taken in
        known = {n for s in manifest.shards + manifest.retiring for n in s.owned_files()}
        known |= {n for n, _ in manifest.retired} | {n for g in state.groups for n in g.files}
        problems += [f"{n} is in {at} but not in the output" for n in sorted(have.keys() - known)]
    problems += _schema_problems(store, sorted(have), at)
    problems += _group_problems(store, manifest, job, sources, state)
    return [f"Delta table: {p}" for p in problems]


def _schema_problems(store: OutputStore, files: Sequence[str], at: str) -> list[str]:
    """Every file of the table has the table's column types (in Delta's terms)."""
    raw = table_schema_json(store.where)
    if raw is None:
        return []
    table = {f["name"]: f["type"] for f in json.loads(raw)["fields"]}
    problems = []
    for name in files:
        try:
            mine = delta_types(read_arrow_schema(store.where, name))
        except OutputError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for column in [*table, *(c for c in mine if c not in table)]:
            if mine.get(column) != table.get(column):
                theirs, ours = _show(table.get(column)), _show(mine.get(column))
                problems.append(
                    f"{name}: column {column!r} is {ours} in the file but {theirs} in {at}: every file of a table "
                    "must have its types"
                )
                break
    return problems


def _show(kind: Any) -> str:
    return "absent" if kind is None else kind if isinstance(kind, str) else json.dumps(kind)


def _group_problems(
    store: OutputStore, manifest: Manifest, job: JobConfig, sources: dict[str, SourceFile], state: TableState
) -> list[str]:
    """Files others compacted batchembed's shards into hold exactly those shards' rows (by id)."""
    column = id_column_name(job)
    by_name = {s.name: s for s in manifest.shards + manifest.retiring}
    problems = []
    for group in state.groups:
        got = [id_text(store.read_table(n, columns=[column]).column(0)).combine_chunks() for n in sorted(group.files)]
        wanted = []
        for name in group.covers:
            shard = by_name.get(name)
            if shard is None:
                problems.append(f"{', '.join(sorted(group.files))} hold rows of {name}, which is not in the output")
                continue
            if store.exists(name):
                wanted.append(id_text(store.read_table(name, columns=[column]).column(0)).combine_chunks())
            else:
                wanted.append(shard_ids(store, shard, sources, job.input.id))
        have = sorted(pa.concat_arrays(got).to_pylist()) if got else []
        want = sorted(pa.concat_arrays(wanted).to_pylist()) if wanted else []
        if have != want:
            problems.append(
                f"{', '.join(sorted(group.files))} (compacted by another writer) hold {len(have)} rows where the "
                f"{len(group.covers)} shards they replace hold {len(want)}, or other ids"
            )
    return problems
