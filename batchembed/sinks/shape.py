"""The shape a sink's table must have, and the one sentence that refuses a table of another shape.

A sink holds one row per output row: the id (its primary key, of the ids' own type), the kept
columns, and the vector (``vector(d)`` in Postgres, ``fixed_size_list<float32>[d]`` in LanceDB).
The expected shape comes from the shards' Arrow schema (or, before the first shard, from a sample
of the input); ``refusal`` compares it with what a store reports and names the table, the
difference and the fix. Pure: no connection, no file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from batchembed.errors import ConfigError


class SinkShapeError(ConfigError):
    """A sink's existing table has another shape than this job's output (refused before anything is bought)."""


@dataclass(frozen=True)
class Expected:
    """The columns of a sink's table: names and Arrow types, and the vector's dimension (None: not known yet)."""

    id: tuple[str, pa.DataType]
    kept: tuple[tuple[str, pa.DataType], ...]
    vector: str
    dim: int | None


def plain(kind: pa.DataType) -> pa.DataType:
    """The type a sink stores for ``kind``: dictionaries as their values, large strings as strings."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    return kind


def expected(schema: pa.Schema, id_column: str, kept: list[str], vector: str, dim: int | None = None) -> Expected:
    """The shape of a sink for shards (or sample rows) of ``schema``; ``dim`` from the vector field when there."""
    if vector in schema.names and pa.types.is_fixed_size_list(schema.field(vector).type):
        dim = schema.field(vector).type.list_size
    return Expected(
        (id_column, plain(schema.field(id_column).type)),
        tuple((name, plain(schema.field(name).type)) for name in kept),
        vector,
        dim,
    )


#: Arrow types a Postgres sink stores, as Postgres names them (``format_type``).
POSTGRES_TYPES = {
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.uint8(): "smallint",
    pa.uint16(): "integer",
    pa.uint32(): "bigint",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.bool_(): "boolean",
    pa.string(): "text",
    pa.binary(): "bytea",
    pa.date32(): "date",
}


def postgres_type(name: str, kind: pa.DataType) -> str:
    """The Postgres type of a column of Arrow type ``kind`` (``ConfigError`` naming it when there is none)."""
    if kind in POSTGRES_TYPES:
        return POSTGRES_TYPES[kind]
    if pa.types.is_timestamp(kind):
        return "timestamp with time zone" if kind.tz else "timestamp without time zone"
    if pa.types.is_decimal(kind):
        return f"numeric({kind.precision},{kind.scale})"
    raise ConfigError(
        f"column {name!r} is {kind}, which a postgres sink cannot hold as a column; drop it from input.keep "
        "(or keep it in the output only)"
    )


def postgres_refusal(table: str, shape: Expected, columns: dict[str, str], primary: list[str]) -> str | None:
    """Why the Postgres table ``table`` (``columns``: name -> ``format_type``; ``primary``: its key) cannot
    hold this job's vectors, as one sentence; None when it can."""
    fix = "drop the table (the next run or `batchembed sync` creates and loads it) or set sink.table to another name"
    id_name, id_kind = shape.id
    want = postgres_type(id_name, id_kind)
    if id_name not in columns:
        return f"postgres table {table} has no id column {id_name!r} ({want}): {fix}"
    if columns[id_name] != want:
        return f"postgres table {table} keeps ids as {columns[id_name]} where this job's ids are {want}: {fix}"
    if primary != [id_name]:
        return f"postgres table {table} does not have {id_name!r} alone as its primary key: {fix}"
    for name, kind in shape.kept:
        if name not in columns:
            return f"postgres table {table} has no column {name!r} (kept by input.keep): {fix}"
        if columns[name] != postgres_type(name, kind):
            return (
                f"postgres table {table} has column {name!r} as {columns[name]} where this job keeps "
                f"{postgres_type(name, kind)}: {fix}"
            )
    have = columns.get(shape.vector)
    if have is None:
        return f"postgres table {table} has no vector column {shape.vector!r}: {fix}"
    if not have.startswith("vector"):
        return f"postgres table {table} has {shape.vector!r} as {have}, not a pgvector vector: {fix}"
    if shape.dim is not None and have != f"vector({shape.dim})":
        return (
            f"postgres table {table} holds {have} in {shape.vector!r} where this job's vectors have {shape.dim} "
            f"dimensions: {fix}"
        )
    return None


def lance_refusal(table: str, shape: Expected, schema: pa.Schema) -> str | None:
    """Why the LanceDB table ``table`` of ``schema`` cannot hold this job's vectors (one sentence), or None."""
    fix = "drop the table (the next run or `batchembed sync` creates and loads it) or set sink.table to another name"
    for name, kind in (shape.id, *shape.kept):
        if name not in schema.names:
            return f"lancedb table {table} has no column {name!r}: {fix}"
        if plain(schema.field(name).type) != kind:
            return f"lancedb table {table} has {name!r} as {schema.field(name).type} where this job has {kind}: {fix}"
    if shape.vector not in schema.names:
        return f"lancedb table {table} has no vector column {shape.vector!r}: {fix}"
    have = schema.field(shape.vector).type
    if not pa.types.is_fixed_size_list(have) or have.value_type != pa.float32():
        return f"lancedb table {table} has {shape.vector!r} as {have}, not a fixed-size list of float32: {fix}"
    if shape.dim is not None and have.list_size != shape.dim:
        return (
            f"lancedb table {table} holds {have.list_size}-dimensional vectors where this job's have {shape.dim}: {fix}"
        )
    return None
