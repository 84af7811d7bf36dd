"""Work units: which rows of which file go into which shard.

A unit is ``shard_rows`` consecutive rows of one file (the last one shorter), or several whole small
files packed together, and is named by its global ordinal (``part-00007.parquet``): files in sorted
order, units in row order. A *chunk* is a few thousand consecutive rows of one unit, the grain at which
texts are built, tokens counted and requests packed (``chunks`` reads them). What a unit was when it
was committed is recorded by the output (``CommittedRange``: any object with these fields, such as the
manifest's shard records), so this stage never depends on how the output keeps it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.input.files import SourceFile


class CommittedRange(Protocol):
    """A committed unit's rows of one input file, as the output recorded them."""

    name: str
    start: int
    end: int
    eof: bool


class Committed(Protocol):
    """What the output holds, as the input stage asks it: each file's committed ranges, and the units taken."""

    def ranges_of(self, file: str) -> list: ...

    @property
    def shards(self) -> list: ...


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
    reused_tokens: int = 0  # tokens that bought the vectors it takes from the output (a refresh's reuse)
    reused_keys: set = field(default_factory=set)  # the texts whose tokens it carries (each once)
    counted: int = 0  # its distinct texts with a vector, as the job's tokenizer counts them
    counted_keys: set = field(default_factory=set)  # those texts (each counted once)
    files: list[tuple[str, int]] = field(default_factory=list)  # a "files" unit: whole small files, in order
    sources: list[str] = field(default_factory=list)  # a retry unit: the files its rows come from

    @property
    def kind(self) -> str:
        """ "range", "files" (several whole small files) or "retry" (as recorded in the manifest)."""
        if self.files:
            return "files"
        return "retry" if self.source is None else "range"


@dataclass
class Chunk:
    """Consecutive rows of one file within one unit."""

    unit: Unit
    source: SourceFile
    first_row: int  # file row number of the first row (range units)
    table: pa.Table
    last: bool = False  # the unit's final chunk
    rows: list[int] | np.ndarray | None = None  # explicit file row numbers (retry and "files" units)
    parts: list[tuple[SourceFile, int]] | None = None  # rows from several files: (file, rows) in order

    def segments(self) -> list[tuple[SourceFile, int, int]]:
        """(file, first index, end index) of each file's rows within the chunk's table."""
        if not self.parts:
            return [(self.source, 0, self.table.num_rows)]
        out, at = [], 0
        for src, n in self.parts:
            out.append((src, at, at + n))
            at += n
        return out

    def source_at(self, index: int) -> SourceFile:
        """The input file of the chunk's row ``index`` (for error messages)."""
        for src, a, b in self.segments():
            if a <= index < b:
                return src
        return self.source

    def file_names(self) -> pa.Array:
        """The input file name of every row (for failure tables and generated ids)."""
        if not self.parts:
            return pa.array([self.source.name] * self.table.num_rows, pa.string())
        return pa.array([src.name for src, n in self.parts for _ in range(n)], pa.string())


def tiled_end(committed: dict[int, CommittedRange], start: int = 0) -> int:
    """Follow committed ranges from ``start`` while they are contiguous; return where they stop."""
    pos = start
    while pos in committed and committed[pos].end > pos:
        pos = committed[pos].end
    return pos


def with_tail(source: SourceFile, committed: dict[int, CommittedRange]) -> SourceFile:
    """``source`` marked as grown (``tail``: the rows the output holds and the byte where they end) when its
    committed ranges reached its end and it has more bytes now than then.

    Only a file whose growth was checked keeps its committed shards over a change (``output/growth.py``);
    any other change retires them, so a committed end shorter than the file means it grew."""
    end = tiled_end(committed)
    for r in committed.values():
        ends = (getattr(r, "ends", None) or {}).get(source.name)
        grew = ends and ends.get("grows") and source.compression is None and source.size > ends["bytes"]
        if grew and r.eof and r.end == end and ends["rows"] == end:
            return dataclasses.replace(source, tail=(end, ends["bytes"]))
    return source


def shard_name(ordinal: int) -> str:
    """File name of the range shard with this ordinal."""
    return f"part-{ordinal:05d}.parquet"


#: Files of at most this many rows (and at most ``shard_rows``) are packed whole, several to a unit.
SMALL_FILE_ROWS = 4096


def units_in(rows: int, shard_rows: int) -> int:
    """How many units a file of ``rows`` rows has (without grouping)."""
    return -(-rows // shard_rows)


def small_limit(shard_rows: int) -> int:
    """Rows up to which a file is "small" and shares a unit with its neighbours."""
    return min(SMALL_FILE_ROWS, shard_rows)


def planned_units(row_counts: list[int], shard_rows: int, pack_small_files: bool = True) -> int:
    """How many shards files of these sizes make (small files packed whole up to ``shard_rows``)."""
    total, group = 0, None
    for rows in row_counts:
        if pack_small_files and 0 < rows <= small_limit(shard_rows):
            if group is None or group + rows > shard_rows:
                total, group = total + 1, 0
            group += rows
            continue
        group = None
        total += units_in(rows, shard_rows)
    return total


def key_changes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Indices ``i`` (>= 1) where ``keys[i]`` differs from ``keys[i - 1]``: where runs of equal keys start."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if len(keys) < 2:
        return np.zeros(0, np.int64)
    same = pc.equal(keys[1:], keys[:-1]).fill_null(False).to_numpy(zero_copy_only=False)
    return np.flatnonzero(~same) + 1
