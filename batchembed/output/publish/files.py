"""What the Delta log says about one shard: :class:`TableFile`, its statistics, and the table schema.

Delta readers skip files by the per-column ``minValues``/``maxValues``/``nullCount`` recorded with
each file; here they are taken from the Parquet footer (row-group statistics, no data read). The
table schema is the shards' Arrow schema in Delta's type system, which has no fixed-size arrays: a
``fixed_size_list<float32>[d]`` vector column is recorded as ``array<float>`` and its dimension kept
in the field's metadata under :data:`DIMENSION_KEY`.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.errors import OutputError
from batchembed.fs.location import Location, first_line

#: Field metadata key holding a vector column's dimension in the Delta schema.
DIMENSION_KEY = "batchembed.dimension"
#: Longer string bounds are left out of the statistics (a kept text column would bloat the log).
MAX_STRING_BOUND = 64


@dataclass(frozen=True)
class TableFile:
    """One file of the table: ``name`` relative to the table root, its ``size`` in bytes, its ``rows``.

    ``stats`` is optional: ``{"minValues": {...}, "maxValues": {...}, "nullCount": {...}}`` per
    top-level column, as :func:`footer_stats` builds it (``numRecords`` is added from ``rows``).
    """

    name: str
    size: int
    rows: int
    stats: dict[str, Any] | None = field(default=None, compare=False)


def footer_stats(metadata: pq.FileMetaData) -> dict[str, dict[str, Any]]:
    """Delta file statistics from a Parquet footer: min, max and null count per top-level column.

    A value goes in only when every row group has it exactly (a truncated string bound or a row group
    written without statistics leaves the column out: a wrong bound would make readers skip rows).
    Numbers, dates and strings up to ``MAX_STRING_BOUND`` characters get bounds; every flat column gets its null count.
    """
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    schema = metadata.schema.to_arrow_schema()
    flat = {name for name in schema.names if not pa.types.is_nested(schema.field(name).type)}
    for index in range(metadata.num_columns):
        name = metadata.schema.column(index).path
        if name not in flat:
            continue
        kind = schema.field(name).type
        lows, highs, count, exact = [], [], 0, metadata.num_row_groups > 0
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(index).statistics
            if stats is None or not stats.has_null_count:
                exact = False
                break
            count += stats.null_count
            if stats.has_min_max and _exact(stats):
                lows.append(stats.min)
                highs.append(stats.max)
        if not exact:
            continue
        nulls[name] = count
        if len(lows) == metadata.num_row_groups:  # a row group of nulls only has no bounds: leave them out
            low, high = _json_value(min(lows), kind), _json_value(max(highs), kind)
            if low is not None and high is not None:
                mins[name], maxs[name] = low, high
    return {"minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _exact(stats) -> bool:
    return getattr(stats, "is_min_value_exact", True) is not False and getattr(stats, "is_max_value_exact", True)


def _json_value(value: Any, kind: pa.DataType) -> Any:
    """A statistic as Delta's JSON stats hold it, or None where we do not record one."""
    if pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
        return None
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_floating(kind):
        return float(value) if math.isfinite(value) else None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):  # ids and labels, not whole texts
        return value if isinstance(value, str) and len(value) <= MAX_STRING_BOUND else None
    if pa.types.is_date(kind) and isinstance(value, datetime.date):
        return value.isoformat()
    return None


def read_table_file(location: Location, name: str) -> TableFile:
    """Size, row count and statistics of the shard ``name`` under ``location``, from its footer alone."""
    where = location.child(name)
    try:
        with where.fs.open_input_file(where.fs_path) as handle:
            size = handle.size()
            metadata = pq.read_metadata(handle)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{where.uri}: cannot read its Parquet footer: {first_line(exc)}") from None
    return TableFile(name, size, metadata.num_rows, footer_stats(metadata))


def read_arrow_schema(location: Location, name: str) -> pa.Schema:
    """The Arrow schema of the shard ``name`` under ``location`` (its footer only)."""
    where = location.child(name)
    try:
        with where.fs.open_input_file(where.fs_path) as handle:
            return pq.read_schema(handle)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{where.uri}: cannot read its Parquet schema: {first_line(exc)}") from None


#: Arrow types delta-rs refuses or records with a table feature its own reader cannot read.
def _unsupported(kind: pa.DataType) -> str | None:
    if pa.types.is_timestamp(kind) and kind.unit in ("s", "ns"):
        return f"{kind} (Delta timestamps are microseconds; write the column as timestamp[us] or timestamp[ms])"
    if pa.types.is_time(kind) or pa.types.is_duration(kind) or pa.types.is_float16(kind):
        return f"{kind} (Delta has no such type)"
    if pa.types.is_nested(kind):
        children = [kind.field(i).type for i in range(kind.num_fields)]
        return next((reason for child in children if (reason := _unsupported(child))), None)
    return None


def delta_schema(schema: pa.Schema):
    """The ``deltalake.Schema`` recording ``schema`` (a shard's Arrow schema) as a Delta table's.

    Fixed-size lists become arrays with the dimension in the field metadata (:data:`DIMENSION_KEY`).
    Raises ``OutputError`` naming each column Delta cannot hold, so a caller can ask before a run.
    """
    from deltalake import Schema

    bad = [f"{f.name}: {reason}" for f in schema if (reason := _unsupported(f.type))]
    if bad:
        raise OutputError("the output cannot be a Delta table: column " + "; column ".join(bad))
    fields = []
    for f in schema:
        if pa.types.is_fixed_size_list(f.type):
            f = f.with_metadata({**(f.metadata or {}), DIMENSION_KEY.encode(): str(f.type.list_size).encode()})
        fields.append(f)
    try:
        return Schema.from_arrow(pa.schema(fields))
    except Exception as exc:  # delta-rs raises a bare Exception for types it cannot map
        raise OutputError(f"the output cannot be a Delta table: {first_line(exc)}") from None


def delta_types(schema: pa.Schema) -> dict[str, Any]:
    """Each column's type in Delta's terms (``"long"``, ``"timestamp"``, ``{"type": "array", ...}``),
    metadata left out: what two files must share to be files of one table."""
    return {f["name"]: f["type"] for f in json.loads(delta_schema(schema).to_json())["fields"]}


#: Delta's primitive types as the Arrow types batchembed writes them.
DELTA_PRIMITIVES = {
    "string": pa.string(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "short": pa.int16(),
    "byte": pa.int8(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ntz": pa.timestamp("us"),
}


def arrow_of_delta(kind: Any) -> pa.DataType | None:
    """The Arrow type a shard writes for Delta type ``kind`` (None: a nested or unknown type, compared whole)."""
    if isinstance(kind, str):
        if kind in DELTA_PRIMITIVES:
            return DELTA_PRIMITIVES[kind]
        if match := re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", kind):
            return pa.decimal128(int(match.group(1)), int(match.group(2)))
    return None
