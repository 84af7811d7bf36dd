"""Settle the output's column types before the first request: read what the run will meet, then decide.

``run`` and ``plan`` call :func:`settle_output` with the input files the run reads and the output it
writes to: each file's type for every column copied from the inputs (a Parquet footer, a CSV's text,
a JSON Lines file's sampled fields) and the Delta table's own types (its log, or the footer of a shard
it holds when the log is gone) go through the rules of :mod:`batchembed.output.schema`. A
``timestamp[ns]`` column is scanned (that column only) for a value finer than a microsecond, which
Delta cannot hold. Nothing is written; a refusal (``SchemaRefused``) costs no token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.input.jsonl import field_type
from batchembed.input.parquet import arrow_schema
from batchembed.input.read import iter_batches
from batchembed.output.publish.delta import table_schema_json
from batchembed.output.publish.files import arrow_of_delta, delta_types, read_arrow_schema
from batchembed.output.schema import SchemaRefused, Seen, normalized, settle

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.job.config import JobConfig
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.store.base import OutputStore


def copied_columns(job: JobConfig) -> list[str]:
    """The output columns copied from the inputs: the id column (when ``input.id`` names one) and
    ``input.keep``. Rerank outputs are shaped by their own task and are not settled here."""
    if job.is_rerank:
        return []
    return list(dict.fromkeys(([job.input.id] if job.input.id else []) + list(job.input.keep)))


def file_type(src: SourceFile, column: str) -> pa.DataType | None:
    """The type ``column`` is read as from ``src`` (None when the file does not have it)."""
    if src.format == "csv":
        return pa.string()  # CSV columns are read as text
    if src.format == "jsonl":
        return field_type(src, column)
    schema = arrow_schema(src)
    return schema.field(column).type if column in schema.names else None


def table_types(store: OutputStore, shards: Sequence[ShardRecord]) -> tuple[dict[str, Any] | None, str]:
    """(each column's Delta type in the output's table, how to name the table in messages); (None, ...)
    when the output has no table and no shard yet. The log is read when there is one; else a shard's footer."""
    name = f"the Delta table at {store.uri}"
    try:
        found = table_schema_json(store.where)
    except OutputError:  # a log delta-rs cannot read: the table check says so; the shards know the types
        found = None
    if found is not None:
        return {f["name"]: f["type"] for f in json.loads(found)["fields"]}, name
    for shard in shards:
        if store.exists(shard.name):
            try:
                return delta_types(read_arrow_schema(store.where, shard.name)), f"the output's shards at {store.uri}"
            except OutputError:
                return None, name  # a shard Delta cannot hold (an older batchembed): nothing to keep to
    return None, name


def settle_output(
    job: JobConfig, reading: Sequence[SourceFile], store: OutputStore | None, shards: Sequence[ShardRecord]
) -> dict[str, pa.DataType]:
    """{column: the Arrow type every shard holds it as} for the columns copied from the inputs, from the
    files this run reads and the output's table; ``SchemaRefused`` naming the file, the column, both types
    and the fix when that cannot be done without loss."""
    columns = copied_columns(job)
    if not columns:
        return {}
    table, table_name = table_types(store, shards) if store is not None else (None, "")
    files = [src for src in reading if src.rows != 0]  # an empty file holds no value of any type
    settled: dict[str, pa.DataType] = {}
    for column in columns:
        seen = [Seen(str(src.path), kind) for src in files if (kind := file_type(src, column)) is not None]
        have = (table or {}).get(column)
        target = arrow_of_delta(have) if have is not None else None
        if have is not None and target is None:  # a nested column: the files must give it the table's type
            settled[column] = _nested(column, seen, have, table_name)
            continue
        decided = settle(column, seen, target, table_name)
        if pa.types.is_timestamp(decided.type):  # written as text, a finer part is kept
            by_path = {str(src.path): src for src in files}
            for where in decided.scan_ns:
                _check_microseconds(by_path[where], column, decided.type)
        settled[column] = decided.type
    return settled


def _nested(column: str, seen: list[Seen], table_type: Any, table_name: str) -> pa.DataType:
    kind = None
    for s in seen:
        norm = normalized(s.type, column, s.where)
        if norm is None:
            continue
        if delta_types(pa.schema([pa.field(column, norm)]))[column] != table_type:
            raise SchemaRefused(
                f"{s.where}: column {column!r} is {s.type} here but {json.dumps(table_type)} in {table_name}, and a "
                "table column cannot change type: give it the table's type upstream, or write the output to a new "
                "output.path (or run with --restart: every row is embedded again)"
            )
        kind = kind or norm
    if kind is None:
        raise SchemaRefused(
            f"column {column!r}: no input file gives it a type to write ({table_name} has a nested one)"
        )
    return kind


def _check_microseconds(src: SourceFile, column: str, target: pa.DataType) -> None:
    """Refuse a ``timestamp[ns]`` column with a value finer than a microsecond (that column is read)."""
    row = 0
    for batch in iter_batches(src, [column]):
        values = batch.column(0)
        raw = values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        finer = np.flatnonzero(raw % 1000)
        if len(finer):
            at = row + int(finer[0])
            raise SchemaRefused(
                f"{src.path}: column {column!r} is {values.type} and row {at} has a part finer than a microsecond, "
                f"which the table's {target} (Delta keeps microseconds) would lose: round it to microseconds (or "
                f"cast it to timestamp[us]) upstream, or drop {column!r} from input.keep"
            )
        row += batch.num_rows
