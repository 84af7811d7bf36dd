"""Stream rows out of Parquet, CSV and JSON Lines files as Arrow record batches, with stable row positions.

Nothing here holds a whole file: Parquet is read record batch by record batch (and a resume starts
at the row group that holds its first row), CSV through pyarrow's streaming reader in blocks, JSON
Lines through pyarrow's streaming JSON reader (``sources_jsonl``). CSV and JSON Lines may be
compressed (``.gz``, ``.zst``, ``.bz2``, ``.xz``): they are decompressed as they are read
(``streams``). CSV columns are read as text, so type inference on the first block can never break
on a later one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchembed import sources_jsonl
from batchembed.errors import InputError
from batchembed.location import INPUT_KINDS, Location, StorageOptions, first_line, input_kind, list_files, locate
from batchembed.streams import DECOMPRESS_ERRORS, decompress_error, decompressed


@dataclass(frozen=True)
class SourceFile:
    """One input file. ``name`` is its path relative to the input root: stable across machines."""

    index: int
    path: Path | str  # a local path, or the file's URI ("s3://bucket/key") in an object store
    name: str
    format: str
    size: int
    mtime_ns: int
    rows: int | None  # known up front for Parquet, None for CSV and JSON Lines
    location: Location | None = field(default=None, compare=False)  # set for object-store files
    compression: str | None = None  # "gzip", "zstd", "bz2" or "xz": decompressed while read (CSV, JSON Lines)

    def open(self):
        """What pyarrow readers take: the local path, or a random-access file read by ranged GETs."""
        if self.location is None:
            return self.path
        return self.location.fs.open_input_file(self.location.fs_path)

    def open_stream(self):
        """A sequential binary stream of the file's (decompressed) bytes: the local path when it is not
        compressed, else a stream; a remote file streams, never downloaded whole."""
        if self.location is None:
            return decompressed(str(self.path), self.compression)
        raw = self.location.fs.open_input_stream(self.location.fs_path, compression=None)
        return decompressed(raw, self.compression)

    def identity(self) -> dict[str, object]:
        """What the job fingerprint records about this file."""
        return {"name": self.name, "size": self.size, "mtime_ns": self.mtime_ns}


def discover(spec: str, storage: StorageOptions | None = None) -> list[SourceFile]:
    """Expand a file, directory or glob (local, or a URI such as ``s3://b/data/*.parquet``) into the
    sorted list of input files it names (see ``location.input_kind``: Parquet, CSV, JSON Lines)."""
    where = locate(spec, storage, "input.path")
    if not where.is_local:
        return _discover_remote(spec, where)
    spec = where.key
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        matches = [Path(p) for p in glob.glob(spec, recursive=True)]
        root = Path(_glob_root(spec))
    elif path.is_dir():
        matches = [p for p in path.rglob("*") if p.is_file()]
        root = path
    elif path.is_file():
        matches = [path]
        root = path.parent
    else:
        raise InputError(f"input.path {spec!r}: no such file or directory")
    files = sorted(p for p in matches if input_kind(p.name) and p.is_file())
    if not files:
        raise InputError(f"input.path {spec!r} matches no input file: {INPUT_KINDS}")
    out = []
    for i, p in enumerate(files):
        st = p.stat()
        fmt, codec = input_kind(p.name)
        rows = None
        if fmt == "parquet":
            try:
                rows = pq.ParquetFile(p).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
        name = os.path.relpath(p, root) if root != Path("") else str(p)
        out.append(SourceFile(i, p, name, fmt, st.st_size, st.st_mtime_ns, rows, compression=codec))
    return out


def _discover_remote(spec: str, where: Location) -> list[SourceFile]:
    """``discover`` for an object store: the files ``list_files`` finds, with Parquet row counts."""
    out = []
    for i, found in enumerate(list_files(where, input_kind)):
        fmt, codec = input_kind(found.location.key)
        loc = found.location
        src = SourceFile(i, loc.uri, found.name, fmt, found.size, found.mtime_ns, None, loc, compression=codec)
        if fmt == "parquet":
            try:
                rows = pq.ParquetFile(src.open()).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{src.path}: not a readable Parquet file: {first_line(exc)}") from None
            src = dataclasses.replace(src, rows=rows)
        out.append(src)
    if not out:
        raise InputError(f"input.path {spec!r} matches no input file: {INPUT_KINDS}")
    return out


def _glob_root(spec: str) -> str:
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


@functools.lru_cache(maxsize=4096)
def arrow_schema(source: SourceFile) -> pa.Schema:
    """A Parquet file's Arrow schema (cached: the input checks ask for it several times per file)."""
    return pq.ParquetFile(source.open()).schema_arrow


def columns_of(source: SourceFile) -> list[str]:
    """The column names of a file (a CSV's header row; the field paths of a JSON Lines file's first records)."""
    if source.format == "parquet":
        return list(arrow_schema(source).names)
    if source.format == "jsonl":
        return sources_jsonl.columns_of(source)
    try:
        # the header alone is decoded strictly; later rows are checked (and named) by the reader
        with _text(source) as fh:
            header = next(csv.reader(fh), None)
    except (*DECOMPRESS_ERRORS, csv.Error, pa.ArrowException) as exc:
        if source.compression and not isinstance(exc, csv.Error):
            raise InputError(decompress_error(source.path, source.compression, exc)) from None
        raise InputError(f"{source.path}: cannot read CSV header: {exc}") from None
    if not header:
        raise InputError(f"{source.path}: CSV file has no header row")
    if any("\udc80" <= ch <= "\udcff" for name in header for ch in name):
        raise InputError(f"{source.path}: the header row is not valid UTF-8 text; re-export the file as UTF-8")
    return header


def _text(source: SourceFile):
    """The file as text for Python's csv module (BOM dropped; bad UTF-8 kept as surrogates to be named)."""
    if source.location is None and source.compression is None:
        return open(source.path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    return io.TextIOWrapper(source.open_stream(), encoding="utf-8-sig", errors="surrogateescape", newline="")


def check_columns(source: SourceFile, needed: list[str]) -> None:
    """Raise InputError naming the file and column if any of ``needed`` is missing."""
    if source.format == "jsonl":
        sources_jsonl.check_fields(source, needed)
        return
    have = columns_of(source)
    for col in needed:
        if col not in have:
            raise InputError(f"{source.path}: no column {col!r} (columns: {', '.join(have)})")


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
            yield from _parquet_batches(source, columns, start_row, batch_rows)
        elif source.format == "jsonl":
            yield from _counted(sources_jsonl.iter_batches(source, columns, start_row), passed)
        else:
            yield from _counted(_csv_batches(source, columns, start_row), passed)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{source.path}: {exc}") from None
    except DECOMPRESS_ERRORS as exc:
        if source.compression:
            raise InputError(decompress_error(source.path, source.compression, exc, passed[0])) from None
        if isinstance(exc, OSError):
            raise InputError(f"{source.path}: read failed: {exc}") from None
        raise


def _counted(batches: Iterator[pa.RecordBatch], passed: list[int]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        passed[0] += batch.num_rows
        yield batch


def _parquet_batches(source: SourceFile, columns: list[str], start_row: int, batch_rows: int):
    # pre_buffer=False: with read-ahead caching on, the reader keeps every column chunk it has read
    # until it is closed, so memory would grow with the file (~30 MB per 100k rows of text).
    pf = pq.ParquetFile(source.open(), pre_buffer=False)
    meta = pf.metadata
    first_group, skip = 0, start_row
    while first_group < meta.num_row_groups and skip >= meta.row_group(first_group).num_rows:
        skip -= meta.row_group(first_group).num_rows
        first_group += 1
    groups = list(range(first_group, meta.num_row_groups))
    if not groups:
        return
    # a small file gains nothing from the thread pool and pays for starting it (many small files)
    threads = meta.num_rows > 65_536
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=threads):
        if skip:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch = batch.slice(skip)
            skip = 0
        yield batch


#: First CSV block size; grown (x4) up to ``CSV_MAX_BLOCK`` when a row does not fit in one block.
CSV_BLOCK = 4 << 20
#: The largest CSV block (and so the largest CSV row) read: 1 GiB.
CSV_MAX_BLOCK = 1 << 30


def _open_csv(source: SourceFile, columns: list[str], header: list[str], block_size: int):
    return pacsv.open_csv(
        source.open_stream(),
        read_options=pacsv.ReadOptions(block_size=block_size),
        # quoted newlines are part of a value: records, not lines, are rows
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            include_columns=columns,
            strings_can_be_null=False,
        ),
    )


def _csv_batches(source: SourceFile, columns: list[str], start_row: int):
    """Record-exact CSV streaming: rows are records (quoted newlines, blank lines, CRLF, BOM do not count).

    Committed rows are skipped by record count on the parsed batches (whole batches dropped, the
    first kept one sliced), never by physical lines. A row larger than the block is retried with a
    bigger block, resuming after the rows already yielded.
    """
    header = columns_of(source)
    block = CSV_BLOCK
    pos = 0  # records passed so far (yielded or skipped)
    while True:
        try:
            for batch in _open_csv(source, columns, header, block):
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
            if "straddl" in text:
                if block >= CSV_MAX_BLOCK:
                    raise InputError(csv_row_too_large(source, pos)) from None
                block = min(block * 4, CSV_MAX_BLOCK)
                start_row = max(start_row, pos)
                pos = 0
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
    header = columns_of(source)
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
        with _text(source) as fh:
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
