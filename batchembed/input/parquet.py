"""Parquet inputs: the Arrow schema, record batches from a row onwards (from the row group that holds
it), and only given row ranges (a part's or a Ray worker's own units), never the whole file in memory."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.errors import InputError
from batchembed.input.files import SourceFile


@functools.lru_cache(maxsize=4096)
def arrow_schema(source: SourceFile) -> pa.Schema:
    """A Parquet file's Arrow schema (cached: the input checks ask for it several times per file)."""
    return pq.ParquetFile(source.open()).schema_arrow


def parquet_batches(source: SourceFile, columns: list[str], start_row: int, batch_rows: int):
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
