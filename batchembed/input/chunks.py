"""The chunks a run reads: every unit not yet committed, in unit order, skipping what is done.

Parquet units are read by seeking to their row group; CSV is streamed once and the rows of committed
units are dropped without building any text. Small files are packed whole, several to a unit.

A part's own units of a Parquet file are read without the others' rows: a ``--shard I/N`` part or a Ray
worker runs a subset of the job's units. Without a group key (rerank's queries, whose ends are in the
data), the units of a Parquet file are known from its row count alone: unit ``i`` is rows
``[i * shard_rows, (i + 1) * shard_rows)``, named by its ordinal as the walk names it, so a part reads
only its units' row groups (``parquet.iter_row_ranges``). CSV files (no row count up front) and small
files packed together are still walked whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator

import numpy as np
import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.input.files import SourceFile
from batchembed.input.parquet import iter_row_ranges
from batchembed.input.read import iter_batches, read_rows
from batchembed.input.units import (
    Chunk,
    Committed,
    CommittedRange,
    Unit,
    key_changes,
    shard_name,
    small_limit,
    tiled_end,
    units_in,
    with_tail,
)

#: Rows per chunk: the grain of text building, token counting and dedup (a run and ``plan`` read alike).
CHUNK_ROWS = 4096


def file_done(source: SourceFile, committed: dict[int, CommittedRange]) -> bool:
    """Whether committed ranges cover the whole file (its last unit recorded reaching the end of file, and
    the file did not grow since)."""
    end = tiled_end(committed)
    if with_tail(source, committed).tail is not None:
        return False
    if any(r.eof and r.end == end for r in committed.values()):
        return True
    return source.rows is not None and end == source.rows


def pending_rows(sources: list[SourceFile], manifest: Committed) -> int | None:
    """Rows still to do, when every file's size is known (None as soon as one CSV is involved)."""
    total = 0
    for src in sources:
        if src.rows is None:
            return None
        total += src.rows - sum(r.end - r.start for r in manifest.ranges_of(src.name))
    return total


def iter_chunks(
    sources: list[SourceFile],
    manifest: Committed,
    columns: list[str],
    shard_rows: int,
    chunk_rows: int,
    group_key: str | None = None,
    *,
    pack_small_files: bool = False,
    wanted: Callable[[Unit], bool] | None = None,
    first_ordinal: int = 0,
) -> Iterator[Chunk]:
    """Chunks of every unit not yet committed, in unit order.

    Units are ``shard_rows`` long; with ``group_key`` a unit (and a chunk) is extended to the end of
    the run of equal keys it has started, so a group (a query's documents) never straddles two.
    Reading starts at the first row not committed (Parquet seeks to its row group; CSV skips rows
    without converting them); rows of later committed units, if any, are dropped unread.

    With ``pack_small_files``, consecutive small files (see ``small_limit``) of the same schema are
    packed whole into one unit of up to ``shard_rows`` rows, and their rows into shared chunks, so
    requests stay full and shards near ``shard_rows`` however small the files.

    With ``wanted`` (a ``--shard`` part's or a Ray worker's units), the units of a Parquet file are
    known without reading it (``own_units``): only the rows of the units ``wanted`` takes are read.
    Other chunks are yielded whatever ``wanted`` says (the caller filters them).
    """
    taken = {s.unit_name for s in manifest.shards}
    counted: set[str] = set()
    pack = _Packer(shard_rows, chunk_rows, taken)
    base = first_ordinal  # a refresh generation names its units from its own range (``output.input_diff``)
    for src in sources:
        committed = {r.start: r for r in manifest.ranges_of(src.name)}
        src = with_tail(src, committed)  # a grown file is read from where its committed rows end
        if file_done(src, committed):
            yield from pack.close()
            fresh = {r.name for r in committed.values()} - counted
            counted |= fresh
            base += len(fresh)
            continue
        if wanted is not None and group_key is None and layout_known(src, committed, shard_rows, pack_small_files):
            yield from pack.close()
            base = yield from own_units(src, committed, base, shard_rows, chunk_rows, columns, wanted)
            continue
        first = tiled_end(committed)
        reader = iter_batches(src, columns, first, chunk_rows)
        if pack_small_files and not committed:
            table, reader = _read_if_small(src, reader, small_limit(shard_rows))
            if table is not None:
                if table.num_rows:
                    base, chunks = pack.add(src, table, base)
                    yield from chunks
                continue
        yield from pack.close()
        # a small file packed with others that grew since: its packed unit was counted by an earlier file
        names = {r.name for r in committed.values()}
        already = len(names & counted)
        counted |= names
        batches = _offsets(reader, first)
        if group_key:
            batches = _group_aligned(batches, group_key)
        walk = _Walk(src, committed, base - already, shard_rows, chunk_rows, group_key, first)
        yield from walk.chunks(batches)
        base += walk.index - already
    yield from pack.close()


def _read_if_small(src: SourceFile, reader: Iterator[pa.RecordBatch], limit: int):
    """(the whole file as a table, None) if it has at most ``limit`` rows, else (None, the same batches).

    Reads at most ``limit`` rows plus one batch ahead; a big file's reader goes on where it stopped.
    """
    if src.rows is not None and src.rows > limit:
        return None, reader
    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > limit:
            return None, itertools.chain(batches, reader)
    if not rows:
        return pa.table({}), None
    return pa.Table.from_batches(batches).replace_schema_metadata(None), None


class _Packer:
    """Packs whole small files into "files" units and their rows into chunks of up to ``chunk_rows``."""

    def __init__(self, shard_rows: int, chunk_rows: int, taken: set[str]) -> None:
        self.shard_rows, self.chunk_rows, self.taken = shard_rows, chunk_rows, taken
        self.unit: Unit | None = None
        self.rows = 0  # rows in the open unit
        self.schema: pa.Schema | None = None
        self.buf: list[tuple[SourceFile, pa.Table]] = []
        self.buf_rows = 0

    def add(self, src: SourceFile, table: pa.Table, base: int) -> tuple[int, list[Chunk]]:
        """Add a small file; returns the next unit ordinal and the chunks now complete."""
        out: list[Chunk] = []
        if self.unit is not None and (self.rows + table.num_rows > self.shard_rows or table.schema != self.schema):
            out += self.close()
        if self.unit is None:
            name = shard_name(base)
            if name.removesuffix(".parquet") in self.taken:
                raise OutputError(
                    f"{name} is already committed for other rows: this output cannot be resumed by this version; "
                    "run with --restart"
                )
            self.unit, self.rows, self.schema = Unit(name, None, 0), 0, table.schema
            base += 1
        if self.buf and self.buf_rows + table.num_rows > self.chunk_rows:
            out.append(self._flush(last=False))
        self.buf.append((src, table))
        self.buf_rows += table.num_rows
        self.unit.files.append((src.name, table.num_rows))
        self.rows += table.num_rows
        return base, out

    def _flush(self, last: bool) -> Chunk:
        table = pa.concat_tables([t for _, t in self.buf])
        positions = np.concatenate([np.arange(t.num_rows, dtype=np.int64) for _, t in self.buf])
        parts = [(src, t.num_rows) for src, t in self.buf]
        self.buf, self.buf_rows = [], 0
        return Chunk(self.unit, parts[0][0], 0, table, last=last, rows=positions, parts=parts)

    def close(self) -> list[Chunk]:
        """End the open unit: its final chunk (marked last), if there is one."""
        if self.unit is None:
            return []
        self.unit.eof = True
        chunk = self._flush(last=True)
        self.unit = None
        return [chunk]


def _offsets(batches: Iterator[pa.RecordBatch], start: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Attach the file row number of each batch's first row."""
    pos = start
    for batch in batches:
        if batch.num_rows:
            yield pos, batch
        pos += batch.num_rows


def _group_aligned(batches, key: str) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Re-cut batches so that none ends inside a run of equal ``key`` values."""
    carry: pa.RecordBatch | None = None
    carry_pos = 0
    for pos, batch in batches:
        if carry is not None:
            batch = pa.Table.from_batches([carry, batch]).combine_chunks().to_batches()[0]
            pos = carry_pos
        changes = key_changes(batch.column(key))
        if len(changes) == 0:
            carry, carry_pos = batch, pos
            continue
        cut = int(changes[-1])
        yield pos, batch.slice(0, cut)
        carry, carry_pos = batch.slice(cut), pos + cut
    if carry is not None and carry.num_rows:
        yield carry_pos, carry


def _first_change_at_or_after(batch: pa.RecordBatch, key: str, offset: int) -> int:
    """Index of the first row >= ``offset`` whose key differs from the row before it (or len(batch))."""
    if offset <= 0:
        return 0
    changes = key_changes(batch.column(key).slice(offset - 1))
    return offset - 1 + int(changes[0]) if len(changes) else batch.num_rows


class _Walk:
    """Walks one file's rows from ``start`` and cuts them into units and chunks."""

    def __init__(self, src, committed, base, shard_rows, chunk_rows, group_key, start):
        self.src, self.committed, self.base = src, committed, base
        self.shard_rows, self.chunk_rows, self.group_key = shard_rows, chunk_rows, group_key
        # units before ``start`` are all committed and contiguous: count them
        self.index = sum(1 for r in committed.values() if r.end <= start)
        self.unit: Unit | None = None
        self.unit_start = start
        self.buf: list[pa.RecordBatch] = []
        self.buf_first = 0
        self.buf_rows = 0

    def _boundary(self, batch: pa.RecordBatch, row0: int, offset: int) -> int:
        """Where in ``batch`` (rows from ``offset``) the current unit ends, or len(batch) if it goes on."""
        nominal = self.unit_start + self.shard_rows - row0
        if nominal >= batch.num_rows:
            return batch.num_rows
        at = max(nominal, offset)
        return _first_change_at_or_after(batch, self.group_key, at) if self.group_key else at

    def _flush(self, last: bool, eof: bool = False) -> Chunk:
        chunk = Chunk(self.unit, self.src, self.buf_first, pa.Table.from_batches(self.buf), last=last)
        if last:
            self.unit.end, self.unit.eof = self.buf_first + self.buf_rows, eof
        self.buf, self.buf_rows = [], 0
        return chunk

    def _next_unit(self, start: int) -> None:
        self.index += 1
        self.unit_start = start
        self.unit = None

    def chunks(self, batches) -> Iterator[Chunk]:
        for row0, batch in batches:
            offset = 0
            while offset < batch.num_rows:
                row = row0 + offset
                rec = self.committed.get(self.unit_start)
                if rec is not None:  # a committed unit: drop its rows
                    take = min(batch.num_rows - offset, rec.end - row)
                    offset += take
                    if row + take >= rec.end:
                        self._next_unit(rec.end)
                    continue
                cut = self._boundary(batch, row0, offset)
                if cut == offset:  # the unit is full at a group boundary
                    yield self._flush(last=True)
                    self._next_unit(row)
                    continue
                if self.buf and self.buf_rows >= self.chunk_rows:
                    yield self._flush(last=False)
                if self.unit is None:
                    self.unit = Unit(shard_name(self.base + self.index), self.src, self.unit_start)
                if not self.buf:
                    self.buf_first = row
                self.buf.append(batch.slice(offset, cut - offset))
                self.buf_rows += cut - offset
                offset = cut
                if cut < batch.num_rows:
                    yield self._flush(last=True)
                    self._next_unit(row0 + cut)
        if self.buf:
            yield self._flush(last=True, eof=True)
            self.index += 1


def retry_chunks(
    failures: list[tuple[SourceFile, list[int]]],
    columns: list[str],
    unit: Unit,
    chunk_rows: int,
    group_key: str | None = None,
) -> Iterator[Chunk]:
    """Chunks holding previously failed rows, file by file; the final one is marked last.

    With ``group_key`` a chunk is only cut where the key changes, so a failed query is redone whole.
    """
    chunks = []
    for src, rows in failures:
        table = read_rows(src, columns, rows)
        ordered = sorted(set(rows))
        start = 0
        while start < table.num_rows:
            end = min(start + chunk_rows, table.num_rows)
            if group_key and end < table.num_rows:
                batch = table.combine_chunks().to_batches()[0]
                end = _first_change_at_or_after(batch, group_key, end)
            chunks.append(Chunk(unit, src, ordered[start], table.slice(start, end - start), rows=ordered[start:end]))
            start = end
    if chunks:
        chunks[-1].last = True
    yield from chunks


def layout_known(
    source: SourceFile, committed: dict[int, CommittedRange], shard_rows: int, pack_small_files: bool
) -> bool:
    """Whether the file's units follow from its row count: a Parquet file not packed with small ones,
    whose committed units (if any) are the ``shard_rows`` ranges the walk would make."""
    rows = source.rows
    if rows is None or (pack_small_files and not committed and rows <= small_limit(shard_rows)):
        return False
    return all(r.start % shard_rows == 0 and r.end == min(r.start + shard_rows, rows) for r in committed.values())


def own_units(
    source: SourceFile,
    committed: dict[int, CommittedRange],
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
