"""Stream rows out of Parquet, CSV and JSON Lines files as Arrow record batches, with stable row positions.

Only the dispatch by format lives here: Parquet is read record batch by record batch (``parquet``: a
resume starts at the row group that holds its first row), CSV through pyarrow's streaming reader in
blocks (``csv``), JSON Lines through pyarrow's streaming JSON reader (``jsonl``). CSV and JSON Lines
may be compressed (``.gz``, ``.zst``, ``.bz2``, ``.xz``): they are decompressed as they are read
(``compression``). Nothing here holds a whole file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from batchembed.errors import InputError
from batchembed.input import csv as sources_csv
from batchembed.input import jsonl as sources_jsonl
from batchembed.input.compression import DECOMPRESS_ERRORS, decompress_error
from batchembed.input.files import SourceFile
from batchembed.input.parquet import arrow_schema, parquet_batches
from batchembed.job.config import JobConfig, column_keys
from batchembed.suggest import did_you_mean, listing


def columns_of(source: SourceFile) -> list[str]:
    """The column names of a file (a CSV's header row; the field paths of a JSON Lines file's first records)."""
    if source.format == "parquet":
        return list(arrow_schema(source).names)
    if source.format == "jsonl":
        return sources_jsonl.columns_of(source)
    return sources_csv.read_header(source)


def check_columns(source: SourceFile, needed: list[str], job: JobConfig | None = None) -> None:
    """Raise InputError naming the file, the column, the key of ``job`` that names it and the near match,
    if any of ``needed`` is missing."""
    keys = column_keys(job) if job is not None else {}
    if source.format == "jsonl":
        sources_jsonl.check_fields(source, needed, keys)
        return
    have = columns_of(source)
    for col in needed:
        if col not in have:
            named = f", which {keys[col]} names" if col in keys else ""
            raise InputError(
                f"{source.path}: no column {col!r}{named}{did_you_mean(col, have)} (columns: {listing(have)})"
            )


def iter_batches(
    source: SourceFile, columns: list[str], start_row: int = 0, batch_rows: int = 8192
) -> Iterator[pa.RecordBatch]:
    """Yield record batches of ``columns`` from row ``start_row`` to the end of the file, in order.

    A compressed file that ends early or is damaged stops with an ``InputError`` naming it, after the
    rows before the damage were yielded (so units already committed stay committed).
    """
    passed = [start_row]  # rows yielded or skipped so far, for the message of a damaged compressed file
    try:
        if source.format == "parquet":
            yield from parquet_batches(source, columns, start_row, batch_rows)
        elif source.format == "jsonl":
            yield from _counted(sources_jsonl.iter_batches(source, columns, start_row), passed)
        else:
            yield from _counted(sources_csv.csv_batches(source, columns, start_row), passed)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{source.path}: {exc}") from None
    except DECOMPRESS_ERRORS as exc:
        if source.compression:
            raise InputError(decompress_error(source.path, source.compression, exc, passed[0], source.head())) from None
        if isinstance(exc, OSError):
            raise InputError(f"{source.path}: read failed: {exc}") from None
        raise


def _counted(batches: Iterator[pa.RecordBatch], passed: list[int]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        passed[0] += batch.num_rows
        yield batch


def read_rows(source: SourceFile, columns: list[str], rows: list[int]) -> pa.Table:
    """Read the given row positions (sorted ascending) of one file; used to retry failed rows."""
    wanted = sorted(set(rows))
    pieces = []
    pos = 0
    it = iter(wanted)
    target = next(it, None)
    for batch in iter_batches(source, columns, 0):
        end = pos + batch.num_rows
        take = []
        while target is not None and target < end:
            take.append(target - pos)
            target = next(it, None)
        if take:
            pieces.append(batch.take(pa.array(take, pa.int64())))
        pos = end
        if target is None:
            break
    if target is not None:
        raise InputError(f"{source.path}: row {target} is past the end of the file ({pos} rows)")
    if not pieces:
        return pa.Table.from_batches([], schema=pa.schema([]))
    return pa.Table.from_batches(pieces)
