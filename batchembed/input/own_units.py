"""A part's own units of a Parquet file, read without reading the others' rows.

A ``--shard I/N`` part or a Ray worker runs a subset of the job's units. Walking a file to find its
units means reading every row, then dropping the ones of other parts: N parts read the input N times.
Without a group key (rerank's queries, whose ends are in the data), the units of a Parquet file are
known from its row count alone: unit ``i`` is rows ``[i * shard_rows, (i + 1) * shard_rows)``, named by
its ordinal as the walk in ``units.iter_chunks`` names it. So a part reads only its units' row groups
(``sources.iter_row_ranges``). CSV files (no row count up front) and small files packed together are
still walked whole.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import pyarrow as pa

from batchembed.input.read import SourceFile, iter_row_ranges
from batchembed.input.units import Chunk, Unit, shard_name, small_limit, units_in
from batchembed.output.manifest import ShardRecord


def layout_known(
    source: SourceFile, committed: dict[int, ShardRecord], shard_rows: int, pack_small_files: bool
) -> bool:
    """Whether the file's units follow from its row count: a Parquet file not packed with small ones,
    whose committed units (if any) are the ``shard_rows`` ranges the walk would make."""
    rows = source.rows
    if rows is None or (pack_small_files and not committed and rows <= small_limit(shard_rows)):
        return False
    return all(r.start % shard_rows == 0 and r.end == min(r.start + shard_rows, rows) for r in committed.values())


def own_units(
    source: SourceFile,
    committed: dict[int, ShardRecord],
    base: int,
    shard_rows: int,
    chunk_rows: int,
    columns: list[str],
    wanted: Callable[[Unit], bool],
) -> Generator[Chunk, None, int]:
    """Chunks of the file's units not committed that ``wanted`` takes, reading only their rows; returns
    the ordinal after the file's last unit (``base`` plus all its units, as the walk counts them)."""
    rows = source.rows or 0
    mine: list[tuple[Unit, int]] = []  # (unit, its end)
    for i in range(units_in(rows, shard_rows)):
        start = i * shard_rows
        if start in committed:
            continue
        unit = Unit(shard_name(base + i), source, start)
        if wanted(unit):
            mine.append((unit, min(start + shard_rows, rows)))
    ranges: list[tuple[int, int]] = []
    for unit, end in mine:  # neighbours read as one range: a row group they share is read once
        if ranges and ranges[-1][1] == unit.start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((unit.start, end))
    if mine:
        yield from _chunks(source, mine, iter_row_ranges(source, columns, ranges, chunk_rows), chunk_rows)
    return base + units_in(rows, shard_rows)


def _chunks(source: SourceFile, mine: list[tuple[Unit, int]], batches, chunk_rows: int):
    """Cut the units' rows into chunks of about ``chunk_rows``; a unit's final chunk is marked last."""
    units = iter(mine)
    unit, end = next(units)
    buf: list[pa.RecordBatch] = []
    buf_rows = buf_first = 0
    for pos, batch in batches:
        offset = 0
        while offset < batch.num_rows:
            row = pos + offset
            while row >= end:
                unit, end = next(units)
            take = min(batch.num_rows - offset, end - row)
            if buf and buf_rows >= chunk_rows:
                yield Chunk(unit, source, buf_first, pa.Table.from_batches(buf))
                buf, buf_rows = [], 0
            if not buf:
                buf_first = row
            buf.append(batch.slice(offset, take))
            buf_rows += take
            offset += take
            if row + take == end:
                unit.end, unit.eof = end, end == source.rows
                yield Chunk(unit, source, buf_first, pa.Table.from_batches(buf), last=True)
                buf, buf_rows = [], 0
