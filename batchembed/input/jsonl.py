"""JSON Lines input (``.jsonl``, ``.ndjson``, compressed or not): one JSON object per line, as Arrow batches.

Records are read by pyarrow's streaming JSON reader in blocks, with an explicit schema that names
only the fields the job reads (every other field is skipped unread, whatever it holds). Fields are
named by dotted paths (``meta.title`` is the ``title`` of the object in ``meta``); each batch is
handed on with one column per path, named by the path, so templates, ids and ``keep`` see them as
columns. A field missing from a record is null.

The fields' types come from the file's first records (``SAMPLE_RECORDS``, parsed by orjson): text
stays text, numbers stay numbers, objects become structs. Rows are records: a blank line is not one,
exactly as pyarrow counts. When the reader refuses a block, the file is read again line by line from
the first row it had not handed on, to name the culprit: ``data/c.jsonl: line 17 (row 15) is not
valid JSON: ...``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from batchembed.errors import InputError
from batchembed.input.compression import DECOMPRESS_ERRORS, binary_lines, decompress_error
from batchembed.suggest import did_you_mean, listing

#: How many records (at most ``SAMPLE_BYTES`` of them) the field paths and types are learned from.
SAMPLE_RECORDS = 1000
SAMPLE_BYTES = 1 << 20
#: First JSON block size; grown (x4) up to ``JSON_MAX_BLOCK`` when a record does not fit in one block.
JSON_BLOCK = 4 << 20
#: The largest block (and so the largest record) read: 1 GiB.
JSON_MAX_BLOCK = 1 << 30


@dataclass(frozen=True)
class Field:
    """A field path seen in the first records: its keys from the top and the Arrow type its values take."""

    keys: tuple[str, ...]
    type: pa.DataType  # (mixed: the type of its first value)
    mixed: bool = False  # its values mix kinds (text and numbers) in the first records


@dataclass(frozen=True)
class Sample:
    """What the first records of a file show: their field paths and how many records there were."""

    fields: dict[str, Field]
    records: int  # 0: the file holds no record at all


def sampled_fields(source) -> dict[str, Field]:
    """Every field path (``a``, ``a.b``) of the file's first records, with its type, in first-seen order."""
    return sample(source).fields


@functools.lru_cache(maxsize=64)
def sample(source) -> Sample:
    """The file's first records (``SAMPLE_RECORDS``, at most ``SAMPLE_BYTES``), read once per file.

    Raises ``InputError`` naming the line if one of those records is not valid JSON or not an object
    (pyarrow's reader must never see a first record that is not an object).
    """
    values: dict[str, list] = {}
    keys: dict[str, tuple[str, ...]] = {}
    taken, size = 0, 0
    try:
        with binary_lines(source.open_stream()) as fh:
            for line_no, line in enumerate(fh, start=1):
                if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if not line.strip():
                    continue
                record = _parse(source, line, line_no, taken)
                _collect(record, (), values, keys, taken)
                taken, size = taken + 1, size + len(line)
                if taken >= SAMPLE_RECORDS or size >= SAMPLE_BYTES:
                    break
    except DECOMPRESS_ERRORS as exc:
        if source.compression:
            raise InputError(decompress_error(source.path, source.compression, exc, head=source.head())) from None
        raise InputError(f"{source.path}: read failed: {exc}") from None
    for seen in values.values():  # paths missing from later records are null there
        seen.extend([None] * (taken - len(seen)))
    return Sample({path: _field(keys[path], vals) for path, vals in values.items()}, taken)


def _parse(source, line: bytes, line_no: int, row: int) -> dict:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source.path}: line {line_no} (row {row}) is not valid UTF-8 text") from None
        raise InputError(f"{source.path}: line {line_no} (row {row}) is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        kind = "null" if record is None else _kind(record)
        raise InputError(
            f"{source.path}: line {line_no} (row {row}) is {kind}, not a JSON object; "
            "JSON Lines input holds one object per line"
        )
    return record


def _collect(record: dict, prefix: tuple[str, ...], values: dict, keys: dict, row: int) -> None:
    """Add the values of every path in ``record`` (nested objects too) to ``values`` (padded with nulls)."""
    for key, value in record.items():
        path = (*prefix, key)
        name = ".".join(path)
        if name not in values:
            values[name], keys[name] = [], path
        seen = values[name]
        seen.extend([None] * (row - len(seen)))
        if len(seen) == row:
            seen.append(value)
        if isinstance(value, dict):
            _collect(value, path, values, keys, row)


def _field(keys: tuple[str, ...], values: list) -> Field:
    """The Arrow type pyarrow gives these values (nulls alone, and null parts, read as text)."""
    try:
        return Field(keys, _no_nulls(pa.array(values).type))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        first = next(v for v in values if v is not None)
        try:
            return Field(keys, _no_nulls(pa.array([first]).type), mixed=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):  # e.g. a number over 64 bits
            return Field(keys, pa.string(), mixed=True)


def _no_nulls(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_null(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _no_nulls(f.type)) for f in kind])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(_no_nulls(kind.value_type))
    return kind


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def columns_of(source) -> list[str]:
    """The field paths of the file's first records (``meta`` and ``meta.title`` for nested objects)."""
    return list(sampled_fields(source))


def check_fields(source, needed: list[str], keys: dict[str, str] | None = None) -> None:
    """Every field the job reads must appear in the first records (and hold one kind of value there).

    A field first seen after ``SAMPLE_RECORDS`` records is refused: a typo would otherwise read as a
    column of nulls. An empty file (no record) has nothing to check.
    """
    if not sample(source).records:
        return
    fields = sampled_fields(source)
    for name in needed:
        found = fields.get(name)
        if found is None:
            named = f", which {keys[name]} names," if keys and name in keys else ""
            raise InputError(
                f"{source.path}: no field {name!r}{named} in the first {SAMPLE_RECORDS:,} records"
                f"{did_you_mean(name, fields)} (fields: {listing(fields)}); a nested field is named by its path, "
                "like meta.title"
            )
        if found.mixed:  # name the first record that differs from the first value
            raise InputError(explain(source, [name], 0, f"field {name!r} holds values of different kinds"))


def field_type(source, name: str) -> pa.DataType:
    """The Arrow type field ``name`` is read as (text when the first records do not show it)."""
    found = sampled_fields(source).get(name)
    return found.type if found is not None else pa.string()


def read_schema(source, columns: list[str]) -> pa.Schema:
    """The explicit schema handed to pyarrow: only the top-level fields holding ``columns``, nested
    objects as structs of only the parts read (a path wanted whole brings its whole sampled type)."""
    fields = sampled_fields(source)
    tree: dict = {}
    for name in sorted(columns, key=lambda n: len(_keys(fields, n))):
        keys = _keys(fields, name)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):  # an ancestor is read whole: this path is inside its type
                break
        else:
            node[keys[-1]] = field_type(source, name)
    return pa.schema([pa.field(k, _as_type(v)) for k, v in tree.items()])


def _keys(fields: dict[str, Field], name: str) -> tuple[str, ...]:
    found = fields.get(name)
    return found.keys if found is not None else tuple(name.split("."))


def _as_type(node) -> pa.DataType:
    if isinstance(node, dict):
        return pa.struct([pa.field(k, _as_type(v)) for k, v in node.items()])
    return node


def _flatten(batch: pa.RecordBatch, columns: list[str], fields: dict[str, Field]) -> pa.RecordBatch:
    """One column per wanted path, named by the path (null where a record or a parent lacks it)."""
    arrays = []
    for name in columns:
        keys = _keys(fields, name)
        column = batch.column(keys[0])
        if len(keys) > 1:
            column = pc.struct_field(column, list(keys[1:]))
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _open(source, schema: pa.Schema, block: int, offset: int = 0):
    return pajson.open_json(
        source.open_from(offset) if offset else source.open_stream(),
        read_options=pajson.ReadOptions(block_size=block),
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )


def iter_batches(source, columns: list[str], start_row: int = 0) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` (paths) from record ``start_row`` to the end of the file, in order.

    Committed records are skipped by count on the parsed batches (only the wanted fields are
    converted), never by lines. A record larger than the block is retried with a bigger block,
    resuming after the records already yielded. Text that is not valid UTF-8 is refused by row. A file
    that grew after the records the output holds (``tail``) is read from where they end when none of
    them is wanted.
    """
    if not sample(source).records:  # first: a file whose first record is not an object stops here
        return
    fields = sampled_fields(source)
    schema = read_schema(source, columns)
    block = JSON_BLOCK
    first, offset = source.reading_from(start_row)
    pos = first  # records passed so far (yielded or skipped)
    while True:
        try:
            for batch in _open(source, schema, block, offset):
                end = pos + batch.num_rows
                if end <= start_row:
                    pos = end
                    continue
                if pos < start_row:
                    batch = batch.slice(start_row - pos)
                batch.validate(full=True)  # invalid UTF-8 in text: refused here, named below
                pos = end
                if batch.num_rows:
                    yield _flatten(batch, columns, fields)
            return
        except pa.ArrowInvalid as exc:
            text = str(exc)
            if offset and "Empty JSON" in text:
                return  # it grew by blank lines only: no record
            if "straddl" in text:
                if block >= JSON_MAX_BLOCK:
                    raise InputError(
                        f"{source.path}: a record after row {pos} is larger than the "
                        f"{JSON_MAX_BLOCK >> 20} MB a JSON Lines record may hold"
                    ) from None
                block = min(block * 4, JSON_MAX_BLOCK)
                start_row = max(start_row, pos)
                pos = first
                continue
            raise InputError(explain(source, columns, pos, text)) from None


def explain(source, columns: list[str], start: int, text: str) -> str:
    """Name the record (line and row) pyarrow refused, reading the file again line by line from row ``start``.

    Only used after the reader failed; the first record that is not valid UTF-8, not valid JSON, not
    an object, or whose wanted field does not fit the type the first records gave it, is named.
    """
    fields = sampled_fields(source)
    wanted = [(_keys(fields, name), field_type(source, name)) for name in columns]
    row = -1
    with binary_lines(source.open_stream()) as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            row += 1
            if row < start:
                continue
            record = _parse(source, line, line_no, row)
            for keys, kind in wanted:
                misfit = _misfit(record, keys, kind)
                if misfit is not None:
                    path, value, expected = misfit
                    return (
                        f"{source.path}: line {line_no} (row {row}): field {'.'.join(path)!r} is {_kind(value)} "
                        f"here, but {expected} in the first records; make every record hold one kind"
                    )
    return f"{source.path}: {text}"


def _misfit(record: dict, keys: tuple[str, ...], kind: pa.DataType):
    """(path, value, what was expected) where ``record`` does not fit field ``keys`` of type ``kind``, else None."""
    value = record
    for depth, key in enumerate(keys):
        if value is None:
            return None
        if not isinstance(value, dict):  # a parent that is not an object
            return keys[:depth], value, "an object"
        value = value.get(key)
    if value is None:
        return None
    try:
        pa.array([value], kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return keys, value, _type_name(kind)
    return None


def _type_name(kind: pa.DataType) -> str:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "a number" if not pa.types.is_integer(kind) else "a whole number"
    if pa.types.is_boolean(kind):
        return "true/false"
    if pa.types.is_struct(kind):
        return "an object"
    if pa.types.is_list(kind):
        return "an array"
    return str(kind)
