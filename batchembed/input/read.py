"""Stream rows out of Parquet, CSV and JSON Lines files as Arrow record batches, with stable row positions.

Nothing here holds a whole file: Parquet is read record batch by record batch (and a resume starts
at the row group that holds its first row), CSV through pyarrow's streaming reader in blocks, JSON
Lines through pyarrow's streaming JSON reader (``sources_jsonl``). CSV and JSON Lines may be
compressed (``.gz``, ``.zst``, ``.bz2``, ``.xz``): they are decompressed as they are read
(``streams``). CSV columns are read as text, so type inference on the first block can never break
on a later one.
"""

from __future__ import annotations

import bisect
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
import pyarrow.parquet as pq

from batchembed.errors import InputError
from batchembed.fs.location import (
    INPUT_KINDS,
    Location,
    StorageOptions,
    first_line,
    input_kind,
    list_files,
    locate,
)
from batchembed.input import jsonl as sources_jsonl
from batchembed.input.compression import DECOMPRESS_ERRORS, decompress_error, decompressed
from batchembed.input.filecache import FileCache
from batchembed.input.identity import known_rows_of, object_etags


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
    cache: FileCache | None = field(default=None, compare=False, repr=False)  # a run's small files, read once
    etag: str | None = None  # an object's ETag (buckets): its identity with the size
    compression: str | None = None  # "gzip", "zstd", "bz2" or "xz": decompressed while read (CSV, JSON Lines)

    def open(self):
        """What pyarrow readers take: the local path, or a random-access file read by ranged GETs (from
        memory when the run's ``cache`` holds the file)."""
        if self.cache is not None:
            return self.cache.open(self, self._read_whole, self._open)
        return self._open()

    def _open(self):
        if self.location is None:
            return self.path
        return self.location.fs.open_input_file(self.location.fs_path)

    def _read_whole(self) -> pa.Buffer:
        """The file's bytes, in one read."""
        if self.location is None:
            with pa.OSFile(str(self.path), "r") as fh:
                return fh.read_buffer()
        with self.location.fs.open_input_file(self.location.fs_path) as fh:
            return fh.read_buffer()

    def open_stream(self):
        """A sequential binary stream of the file's (decompressed) bytes: the local path when it is not
        compressed, else a stream; a remote file streams, never downloaded whole (from memory when the
        run's ``cache`` holds the file)."""
        if self.cache is not None:
            return decompressed(self.cache.open(self, self._read_whole, self._raw_stream), self.compression)
        return decompressed(self._raw_stream(), self.compression)

    def _raw_stream(self):
        """The file's bytes as stored: the local path, or a streaming remote reader."""
        if self.location is None:
            return str(self.path)
        return self.location.fs.open_input_stream(self.location.fs_path, compression=None)


def discover(
    spec: str, storage: StorageOptions | None = None, cache: FileCache | None = None, known: dict | None = None
) -> list[SourceFile]:
    """Expand a file, directory or glob (local, or a URI such as ``s3://b/data/*.parquet``) into the
    sorted list of input files it names (see ``location.input_kind``: Parquet, CSV, JSON Lines). With a
    run's ``cache``, small files are read once: the opens that follow (checks, reading) are served from
    memory. ``known`` (name -> (identity, rows)) gives the row counts of files the output already holds
    whole: such a file, unchanged, is listed but not opened."""
    where = locate(spec, storage, "input.path")
    if not where.is_local:
        return _discover_remote(spec, where, cache, known)
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
        name = os.path.relpath(p, root) if root != Path("") else str(p)
        src = SourceFile(i, p, name, fmt, st.st_size, st.st_mtime_ns, None, cache=cache, compression=codec)
        rows = known_rows_of(known, name, st.st_size, st.st_mtime_ns) if fmt == "parquet" else None
        if rows is not None:
            src = dataclasses.replace(src, rows=rows)
        elif fmt == "parquet":
            try:
                src = dataclasses.replace(src, rows=pq.ParquetFile(src.open()).metadata.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
        out.append(src)
    return out


def _discover_remote(
    spec: str, where: Location, cache: FileCache | None, known: dict | None = None
) -> list[SourceFile]:
    """``discover`` for an object store: the files ``list_files`` finds, with Parquet row counts."""
    out = []
    listed = list_files(where, input_kind)
    etags = object_etags(where, single=len(listed) == 1 and listed[0].location.key == where.key)
    for i, found in enumerate(listed):
        fmt, codec = input_kind(found.location.key)
        loc = found.location
        etag = etags.get(loc.key)
        src = SourceFile(
            i,
            loc.uri,
            found.name,
            fmt,
            found.size,
            found.mtime_ns,
            None,
            loc,
            cache=cache,
            etag=etag,
            compression=codec,
        )
        rows = known_rows_of(known, found.name, found.size, found.mtime_ns, etag) if fmt == "parquet" else None
        if rows is not None:
            src = dataclasses.replace(src, rows=rows)
        elif fmt == "parquet":
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
    stream = source.open_stream()
    if isinstance(stream, (str, Path)):
        return open(stream, newline="", encoding="utf-8-sig", errors="surrogateescape")
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


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
            from batchembed.input import csv as sources_csv  # (it builds on this module's SourceFile)

            yield from _counted(sources_csv.csv_batches(source, columns, start_row), passed)
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


def iter_row_ranges(
    source: SourceFile, columns: list[str], ranges: list[tuple[int, int]], batch_rows: int = 8192
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(file row of its first row, batch) of the rows of a Parquet file within ``ranges`` ([start, end),
    ascending, apart) only: one open, and only the row groups that hold some of those rows are read
    (a ``--shard`` part or a Ray worker reads its own units, not the whole file)."""
    try:
        pf = pq.ParquetFile(source.open(), pre_buffer=False)
        meta = pf.metadata
        starts = [0]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        threads = meta.num_rows > 65_536
        for a, b in ranges:
            first = bisect.bisect_right(starts, a) - 1
            last = bisect.bisect_left(starts, b) - 1
            pos = starts[first]
            groups = list(range(first, last + 1))
            for batch in pf.iter_batches(
                batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=threads
            ):
                lo, hi = max(a, pos), min(b, pos + batch.num_rows)
                if hi > lo:
                    yield lo, batch.slice(lo - pos, hi - lo)
                pos += batch.num_rows
                if pos >= b:
                    break
    except pa.ArrowInvalid as exc:
        raise InputError(f"{source.path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"{source.path}: read failed: {exc}") from None


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
