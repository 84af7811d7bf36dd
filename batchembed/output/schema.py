"""The output's column types, settled from every input file and the table before anything is bought (pure).

The columns a run copies from its inputs (the id column and ``input.keep``) may arrive with other types
in other files: Parquet integer ids beside CSV text ids, ``int32`` beside ``int64``, a column that is
all null in one file, a ``timestamp[ns]`` Delta cannot hold. Every shard of a table must have the
table's types, so the type of each column is decided once, here, for the whole table:

* **one kind per column** -- any text in it (a CSV column, a string field) makes it ``string``, the
  others' text form (ids are compared by their text form anyway: 42 and "42" are one id); integers
  and floats together make ``double``; timestamps with a time zone are kept as UTC instants (Delta's);
* **wide numbers** -- every integer is written as ``int64`` (Delta ``long``) and every float as
  ``float64`` (``double``), so a file whose ``int32`` became ``int64`` upstream is the same table;
* **a column of nulls** takes the type of the other files (``string`` when no file has a value);
* **Delta's types only** -- ``timestamp[s]``/``[ms]`` become ``[us]``; ``timestamp[ns]`` too when no
  value has a finer part (the caller scans it); ``float16`` becomes ``double``; ``time``,
  ``duration``, ``uint64`` and mixes without a lossless common type are refused, naming the file,
  the column, both types and the fix;
* **the table's type wins** -- once a table exists, a new file's column must fit its type without loss
  (``int32`` into ``long``, numbers into ``string``, ``[ns]`` without a finer part into ``[us]``);
  a drift the table cannot take (text into ``long``, ``double`` into ``long``) is refused.

The result maps each column to the Arrow type every shard holds it as (:func:`conform` casts a batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import InputError

TEXT = pa.string()


class SchemaRefused(InputError):
    """A column's types cannot be settled without loss: nothing is bought (the message says the fix)."""


@dataclass(frozen=True)
class Seen:
    """One input file's type for a column: ``where`` (the file, for messages) and its Arrow ``type``."""

    where: str
    type: pa.DataType


@dataclass(frozen=True)
class Settled:
    """A column's settled type and the files whose ``timestamp[ns]`` must be scanned for a finer part."""

    type: pa.DataType
    scan_ns: tuple[str, ...] = ()


def _fix(column: str) -> str:
    return f"cast the column upstream, or drop {column!r} from input.keep if it is not needed"


def normalized(kind: pa.DataType, column: str, where: str) -> pa.DataType | None:
    """The type a file's column is written as in the table (None: a column of nulls, no type of its own)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind):
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return TEXT
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return pa.binary()
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_uint64(kind):
        raise SchemaRefused(
            f"{where}: column {column!r} is uint64, which a Delta table cannot hold without loss (its integers are "
            f"signed 64-bit): cast it to int64 or string upstream, or drop {column!r} from input.keep"
        )
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_floating(kind):
        return pa.float64()
    if pa.types.is_date(kind):
        return pa.date32()
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", tz="UTC" if kind.tz else None)  # Delta keeps instants in UTC
    if pa.types.is_time(kind) or pa.types.is_duration(kind) or pa.types.is_interval(kind):
        raise SchemaRefused(
            f"{where}: column {column!r} is {kind}, which a Delta table cannot hold (Delta has no time-of-day or "
            f"duration type): {_fix(column)} (e.g. to string or int64)"
        )
    if pa.types.is_nested(kind):
        bad = _unsupported_child(kind)
        if bad is not None:
            raise SchemaRefused(
                f"{where}: column {column!r} is {kind}, whose {bad} a Delta table cannot hold: {_fix(column)}"
            )
    return kind


def _unsupported_child(kind: pa.DataType) -> pa.DataType | None:
    for i in range(kind.num_fields):
        child = kind.field(i).type
        if (pa.types.is_timestamp(child) and child.unit in ("s", "ns")) or (
            pa.types.is_time(child) or pa.types.is_duration(child) or pa.types.is_float16(child)
        ):
            return child
        if pa.types.is_nested(child) and (found := _unsupported_child(child)) is not None:
            return found
    return None


def _castable_to_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_decimal(kind)
        or kind == TEXT
    )


def combine(column: str, seen: list[tuple[Seen, pa.DataType | None]]) -> pa.DataType | None:
    """The one type of a column over the files that hold it (``seen``: each file's type and its normalized
    one); None when every file holds only nulls."""
    typed = [(s, t) for s, t in seen if t is not None]
    if not typed:
        return None
    kinds = list(dict.fromkeys(t for _, t in typed))
    if len(kinds) == 1:
        return kinds[0]
    if TEXT in kinds:
        odd = next(((s, t) for s, t in typed if not _castable_to_text(t)), None)
        if odd is None:
            return TEXT
        first_text = next(s for s, t in typed if t == TEXT)
        return _mixed(column, first_text, odd[0])
    if all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
        return pa.float64()
    first = typed[0][0]
    other = next(s for s, t in typed if t != typed[0][1])
    return _mixed(column, first, other)


def _mixed(column: str, a: Seen, b: Seen) -> pa.DataType:
    raise SchemaRefused(
        f"column {column!r} is {a.type} in {a.where} but {b.type} in {b.where}, and one table column cannot hold "
        f"both without loss: {_fix(column)} so that every file gives it one type"
    )


def fits(kind: pa.DataType, target: pa.DataType) -> bool:
    """Whether values of ``kind`` (a file's own type) become ``target`` (the table's) without loss
    (``timestamp[ns]``: provided no value has a finer part than a microsecond; the caller scans)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind) or kind == target:
        return True
    if target == TEXT:
        norm = kind if not (pa.types.is_large_string(kind) or pa.types.is_string_view(kind)) else TEXT
        return _castable_to_text(norm)
    if pa.types.is_integer(target):
        return pa.types.is_integer(kind) and not pa.types.is_uint64(kind) and _int_width(kind) <= target.bit_width
    if pa.types.is_floating(target):
        if pa.types.is_integer(kind):
            return target.bit_width == 64 and not pa.types.is_uint64(kind)
        return pa.types.is_floating(kind) and kind.bit_width <= target.bit_width
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(kind) and (kind.tz is None) == (target.tz is None)
    if pa.types.is_date(target):
        return pa.types.is_date(kind)
    if pa.types.is_binary(target):
        return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)
    return False


def _int_width(kind: pa.DataType) -> int:
    """Bits a signed integer needs to hold every value of ``kind``."""
    return kind.bit_width + (0 if pa.types.is_signed_integer(kind) else 1)


def settle(column: str, seen: list[Seen], table: pa.DataType | None, table_name: str) -> Settled:
    """The type every shard holds ``column`` as, from the files' types (``seen``) and the table's own
    (``table``, None without a table); ``SchemaRefused`` naming the file, the column, both types and the fix."""
    pairs = [(s, normalized(s.type, column, s.where)) for s in seen]
    ns = tuple(s.where for s in seen if pa.types.is_timestamp(s.type) and s.type.unit == "ns")
    if table is None:
        return Settled(combine(column, pairs) or TEXT, ns)
    for s, _norm in pairs:
        if not fits(s.type, table):
            raise SchemaRefused(
                f"{s.where}: column {column!r} is {s.type} here but {table} in {table_name}, and a table column "
                f"cannot change type: make it {table} upstream, or write the output to a new output.path (or run "
                "with --restart: every row is embedded again)"
            )
    return Settled(table, ns if pa.types.is_timestamp(table) else ())


def conform(table: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """``table`` with each column named in ``types`` cast to its settled type (checked casts: a value that
    would change raises rather than being written changed)."""
    for name, kind in types.items():
        at = table.schema.get_field_index(name)
        if at < 0 or table.schema.field(at).type == kind:
            continue
        column = table.column(at)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        table = table.set_column(at, pa.field(name, kind), pc.cast(column, kind))
    return table
