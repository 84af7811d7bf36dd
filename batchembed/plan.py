"""Work units and chunks: which rows of which file go into which shard, skipping what is done.

A unit is ``shard_rows`` consecutive rows of one file (the last one shorter) and is named by its
global ordinal (``part-00007.parquet``): files in sorted order, units in row order. The reader
yields *chunks*: a few thousand consecutive rows of one unit, the grain at which texts are built,
tokens counted and requests packed. Parquet units are read by seeking to their row group; CSV is
streamed once and the rows of committed units are dropped without building any text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from batchembed.checkpoint import Manifest
from batchembed.sources import SourceFile, iter_batches, read_rows


@dataclass
class Unit:
    """One future shard."""

    name: str
    source: SourceFile | None  # None for a retry unit (rows of several files)
    start: int = 0
    end: int | None = None  # known when the unit's last chunk is read
    eof: bool = False
    resolves: list[str] = field(default_factory=list)  # failure files a retry unit answers
    tokens: int = 0  # tokens spent on this unit's rows

    @property
    def kind(self) -> str:
        """ "range" or "retry" (as recorded in the manifest)."""
        return "retry" if self.source is None else "range"


@dataclass
class Chunk:
    """Consecutive rows of one file within one unit."""

    unit: Unit
    source: SourceFile
    first_row: int  # file row number of the first row (range units)
    table: pa.Table
    last: bool = False  # the unit's final chunk
    rows: list[int] | None = None  # explicit file row numbers (retry units)


def shard_name(ordinal: int) -> str:
    """File name of the range shard with this ordinal."""
    return f"part-{ordinal:05d}.parquet"


def units_in(rows: int, shard_rows: int) -> int:
    """How many units a file of ``rows`` rows has."""
    return -(-rows // shard_rows)


def known_units(source: SourceFile, manifest: Manifest, shard_rows: int) -> int | None:
    """Number of units of a file when known without reading it (Parquet; CSV once its end was committed)."""
    if source.rows is not None:
        return units_in(source.rows, shard_rows)
    for rec in manifest.ranges_of(source.name):
        if rec.eof:
            return rec.start // shard_rows + 1
    return None


def pending_rows(sources: list[SourceFile], manifest: Manifest) -> int | None:
    """Rows still to do, when every file's size is known (None as soon as one CSV is involved)."""
    total = 0
    for src in sources:
        if src.rows is None:
            return None
        total += src.rows - sum(r.end - r.start for r in manifest.ranges_of(src.name))
    return total


def iter_chunks(
    sources: list[SourceFile],
    manifest: Manifest,
    columns: list[str],
    shard_rows: int,
    chunk_rows: int,
) -> Iterator[Chunk]:
    """Chunks of every unit not yet committed, in unit order."""
    base = 0
    for src in sources:
        done = {r.start for r in manifest.ranges_of(src.name)}
        count = known_units(src, manifest, shard_rows)
        if count is not None and all(k * shard_rows in done for k in range(count)):
            base += count
            continue
        if src.rows is not None:  # Parquet: seek to each missing unit
            for k in range(count or 0):
                start = k * shard_rows
                if start in done:
                    continue
                end = min(start + shard_rows, src.rows)
                slices = _slices(_offsets(iter_batches(src, columns, start, chunk_rows), start, end), shard_rows, done)
                yield from _chunks(src, slices, base, shard_rows, chunk_rows, reaches_eof=end == src.rows)
            base += count or 0
        else:  # CSV: one pass from the first missing unit, dropping committed ones
            first = 0
            while first in done:
                first += shard_rows
            seen = [first]
            batches = _counting(_offsets(iter_batches(src, columns, first), first, None), seen)
            yield from _chunks(src, _slices(batches, shard_rows, done), base, shard_rows, chunk_rows, True)
            base += units_in(seen[0], shard_rows)


def _offsets(batches: Iterator[pa.RecordBatch], start: int, end: int | None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Attach the file row number of each batch's first row; stop at ``end``."""
    pos = start
    for batch in batches:
        if end is not None and pos + batch.num_rows > end:
            batch = batch.slice(0, end - pos)
        if batch.num_rows:
            yield pos, batch
        pos += batch.num_rows
        if end is not None and pos >= end:
            return


def _counting(batches: Iterator[tuple[int, pa.RecordBatch]], seen: list[int]):
    """Pass batches through, recording in ``seen[0]`` how many rows the file has so far."""
    for pos, batch in batches:
        seen[0] = pos + batch.num_rows
        yield pos, batch


def _slices(batches: Iterator[tuple[int, pa.RecordBatch]], shard_rows: int, done: set[int]):
    """Cut batches at unit boundaries, dropping rows of committed units: yields (unit_start, row, batch)."""
    for pos, batch in batches:
        offset = 0
        while offset < batch.num_rows:
            row = pos + offset
            unit_start = row - row % shard_rows
            take = min(batch.num_rows - offset, unit_start + shard_rows - row)
            if unit_start not in done:
                yield unit_start, row, batch.slice(offset, take)
            offset += take


def _chunks(src: SourceFile, slices, base: int, shard_rows: int, chunk_rows: int, reaches_eof: bool):
    """Group consecutive slices of one unit into chunks of about ``chunk_rows`` rows.

    A chunk is cut for size only when the next slice belongs to the same unit, so whether a chunk
    is its unit's last is always known when it is yielded, without reading ahead.
    """
    unit: Unit | None = None
    buf: list[pa.RecordBatch] = []
    first = rows = 0

    def finish(last: bool, eof: bool = False) -> Chunk:
        nonlocal buf, rows
        chunk = Chunk(unit, src, first, pa.Table.from_batches(buf), last=last)
        if last:
            unit.end, unit.eof = first + rows, eof
        buf, rows = [], 0
        return chunk

    for unit_start, row, batch in slices:
        if buf and unit_start != unit.start:
            yield finish(last=True)
        elif buf and rows >= chunk_rows:
            yield finish(last=False)
        if not buf:
            if unit is None or unit.start != unit_start:
                unit = Unit(shard_name(base + unit_start // shard_rows), src, unit_start)
            first = row
        buf.append(batch)
        rows += batch.num_rows
    if buf:
        yield finish(last=True, eof=reaches_eof)


def retry_chunks(
    failures: list[tuple[SourceFile, list[int]]], columns: list[str], unit: Unit, chunk_rows: int
) -> Iterator[Chunk]:
    """Chunks holding previously failed rows, file by file; the final one is marked last."""
    chunks = []
    for src, rows in failures:
        table = read_rows(src, columns, rows)
        ordered = sorted(set(rows))
        for i in range(0, table.num_rows, chunk_rows):
            chunks.append(Chunk(unit, src, ordered[i], table.slice(i, chunk_rows), rows=ordered[i : i + chunk_rows]))
    if chunks:
        chunks[-1].last = True
    yield from chunks
