"""CSV input streamed record-exactly: records, not lines, are rows (quoted newlines, blank lines, CRLF
and a BOM do not count), committed rows skipped by record count, a row larger than the block read
again with a bigger block, and errors that name the file, row and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from batchembed.errors import InputError
from batchembed.input.compression import DECOMPRESS_ERRORS, decompress_error
from batchembed.input.files import SourceFile

#: First CSV block size; grown (x4) up to ``CSV_MAX_BLOCK`` when a row does not fit in one block.
CSV_BLOCK = 4 << 20
#: The largest CSV block (and so the largest CSV row) read: 1 GiB.
CSV_MAX_BLOCK = 1 << 30


def read_header(source: SourceFile) -> list[str]:
    """A CSV file's header row: the column names (decoded strictly; later rows are checked, and named, by
    the reader)."""
    try:
        with text_stream(source) as fh:
            names = next(csv.reader(fh), None)
    except (*DECOMPRESS_ERRORS, csv.Error, pa.ArrowException) as exc:
        if source.compression and not isinstance(exc, csv.Error):
            raise InputError(decompress_error(source.path, source.compression, exc, head=source.head())) from None
        raise InputError(f"{source.path}: cannot read CSV header: {exc}") from None
    if not names:
        raise InputError(f"{source.path}: CSV file has no header row")
    if any("\udc80" <= ch <= "\udcff" for name in names for ch in name):
        raise InputError(f"{source.path}: the header row is not valid UTF-8 text; re-export the file as UTF-8")
    return names


def text_stream(source: SourceFile):
    """The file as text for Python's csv module (BOM dropped; bad UTF-8 kept as surrogates to be named)."""
    stream = source.open_stream()
    if isinstance(stream, (str, Path)):
        return open(stream, newline="", encoding="utf-8-sig", errors="surrogateescape")
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _open_csv(source: SourceFile, columns: list[str], header: list[str], block_size: int, offset: int = 0):
    """pyarrow's streaming reader over the file, or over its bytes from ``offset`` on (a grown file's new
    records: the header is given, not read)."""
    if offset:
        stream, options = source.open_from(offset), pacsv.ReadOptions(block_size=block_size, column_names=header)
    else:
        stream, options = source.open_stream(), pacsv.ReadOptions(block_size=block_size)
    return pacsv.open_csv(
        stream,
        read_options=options,
        # quoted newlines are part of a value: records, not lines, are rows
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            include_columns=columns,
            strings_can_be_null=False,
        ),
    )


def csv_batches(source: SourceFile, columns: list[str], start_row: int):
    """Record-exact CSV streaming: rows are records (quoted newlines, blank lines, CRLF, BOM do not count).

    Committed rows are skipped by record count on the parsed batches (whole batches dropped, the
    first kept one sliced), never by physical lines. A row larger than the block is retried with a
    bigger block, resuming after the rows already yielded. A file that grew after the rows the output
    holds (``SourceFile.tail``) is read from the byte where they end when none of them is wanted.
    """
    header = read_header(source)
    block = CSV_BLOCK
    first, offset = source.reading_from(start_row)
    pos = first  # records passed so far (yielded or skipped)
    while True:
        try:
            for batch in _open_csv(source, columns, header, block, offset):
                end = pos + batch.num_rows
                if end <= start_row:
                    pos = end
                    continue
                if pos < start_row:
                    batch = batch.slice(start_row - pos)
                pos = end
                if batch.num_rows:
                    yield batch
            return
        except pa.ArrowInvalid as exc:
            text = str(exc)
            if offset and "Empty CSV file" in text:
                return  # it grew by blank lines only: no record
            if "straddl" in text:
                if block >= CSV_MAX_BLOCK:
                    raise InputError(csv_row_too_large(source, pos)) from None
                block = min(block * 4, CSV_MAX_BLOCK)
                start_row = max(start_row, pos)
                pos = first
                continue
            raise InputError(explain_csv_error(source, text)) from None


def csv_row_too_large(source: SourceFile, after: int) -> str:
    """The message for a CSV row over ``CSV_MAX_BLOCK`` bytes, naming its row and line."""
    limit = f"{CSV_MAX_BLOCK >> 20} MB"
    found = _scan_csv(source, lambda record: sum(len(f) for f in record) >= CSV_MAX_BLOCK, after)
    where = f"row {found[0]} (line {found[1]})" if found else f"a row after row {after}"
    return f"{source.path}: {where} is larger than the {limit} a CSV row may hold; split that cell or use Parquet"


def explain_csv_error(source: SourceFile, text: str) -> str:
    """Turn pyarrow's CSV parse/convert error into one naming the row (record) and its line."""
    header = read_header(source)
    if "invalid UTF8" in text:
        found = _scan_csv(source, lambda record: any("\udc80" <= ch <= "\udcff" for f in record for ch in f))
        where = f"row {found[0]} (line {found[1]})" if found else "a row"
        return f"{source.path}: {where} is not valid UTF-8 text; re-export the file as UTF-8"
    if "Expected" in text and "columns" in text:
        found = _scan_csv(source, lambda record: len(record) != len(header))
        if found:
            row, line, record = found
            return (
                f"{source.path}: line {line} (row {row}) has {len(record)} fields, the header has {len(header)}; "
                "quote values that contain commas, or fix that line"
            )
    return f"{source.path}: {text}"


def _scan_csv(source: SourceFile, bad, start: int = 0):
    """First record (from row ``start``) for which ``bad(record)`` holds: (row, first line, record), or None.

    Only used to name the culprit after pyarrow refused the file; counts rows as pyarrow does
    (records after the header; empty lines are not rows).
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(CSV_MAX_BLOCK)
    try:
        with text_stream(source) as fh:
            reader = csv.reader(fh)
            next(reader, None)
            row, line = -1, reader.line_num
            try:
                for record in reader:
                    first_line, line = line + 1, reader.line_num
                    if not record:
                        continue
                    row += 1
                    if row >= start and bad(record):
                        return row, first_line, record
            except csv.Error:  # a field over the limit (or a broken quote): this is the record
                return row + 1, line + 1, []
    finally:
        csv.field_size_limit(limit)
    return None
