"""What changed in the output's Delta table between the version a sink holds and the current one.

A publish adds and removes whole shard files, so the difference between two versions is read from
the log (the files of each version) and from those files only: the rows of the files that left,
and the rows of the files that came. A row is keyed by its id; a row of a new file whose id was in
a file that left, with the same ``_text_key`` (the exact text embedded, hence the vector) and the
same kept columns, was merely rewritten into a new shard and is not written again. What is written
per sync is then exactly the rows that changed; what is deleted, the ids no file holds any more.

When the difference cannot be computed (no version recorded, another table, a version whose log or
files are gone), the change is a full reload, with the reason. Rows stream from the files as record
batches: the comparison holds ids and one 64-bit digest per changed file's row, never vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchembed.errors import OutputError
from batchembed.fs.location import Location
from batchembed.output.cache import KEY_COLUMN
from batchembed.output.publish.delta import snapshot

#: Rows per record batch streamed into a sink.
BATCH_ROWS = 8192


@dataclass(frozen=True)
class Held:
    """What a sink records holding: the Delta table's id and version (None: nothing recorded)."""

    table_id: str | None = None
    version: int | None = None


@dataclass
class Shape:
    """The columns a sink holds, named as in the shards: the id, the kept columns, the vector."""

    id: str
    kept: list[str]
    vector: str

    @property
    def columns(self) -> list[str]:
        """Every column a sink holds, in order."""
        return [self.id, *self.kept, self.vector]


@dataclass
class Change:
    """What a sink applies to go from the version it holds to ``version``.

    ``full``: the sink's rows are replaced by every row of ``files`` (``reason`` says why). Otherwise
    ``wanted`` maps each new file to the ids of its rows to upsert, and ``deleted`` holds the ids to
    delete. ``changed``: rows written (``upserts``) plus rows deleted."""

    table_id: str
    version: int
    files: list[str]
    full: bool
    reason: str = ""
    wanted: dict[str, pa.Array] = field(default_factory=dict)
    deleted: pa.Array | None = None
    upserts: int = 0
    total_rows: int = 0

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to delete (the version still moves)."""
        return not self.full and self.upserts == 0 and not len(self.deleted)


def current(where: Location, options: dict[str, str]) -> tuple[str, int, dict[str, int], int] | None:
    """The table's id, current version, files and rows (None: no table yet)."""
    return snapshot(where, options)


def plan(where: Location, options: dict[str, str], shape: Shape, held: Held, now=None) -> Change | None:
    """The change bringing a sink that holds ``held`` to the table's current version (None: no table)."""
    now = now or current(where, options)
    if now is None:
        return None
    table_id, version, files, total = now
    names = sorted(files)
    if held.version is None:
        return Change(table_id, version, names, True, "first load", total_rows=total)
    if held.table_id != table_id:
        why = f"it holds another Delta table's rows (table {held.table_id}); this output's table is {table_id}"
        return Change(table_id, version, names, True, why, total_rows=total)
    if held.version == version:
        return Change(table_id, version, names, False, deleted=pa.array([], pa.string()), total_rows=total)
    if held.version > version:
        why = f"it holds version {held.version}, newer than the table's {version}"
        return Change(table_id, version, names, True, why, total_rows=total)
    before = snapshot(where, options, held.version)
    if before is None:
        why = f"the log of version {held.version} it holds is gone"
        return Change(table_id, version, names, True, why, total_rows=total)
    gone = sorted(set(before[2]) - set(files))
    came = sorted(set(files) - set(before[2]))
    missing = [n for n in gone if not _exists(where, n)]
    if missing:
        why = (
            f"the files of version {held.version} it holds are gone ({missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); keep them with output.history_days"
        )
        return Change(table_id, version, names, True, why, total_rows=total)
    return _difference(where, shape, table_id, version, names, gone, came, total)


def _exists(where: Location, name: str) -> bool:
    loc = where.child(name)
    return loc.fs.get_file_info(loc.fs_path).type != pafs.FileType.NotFound


def _digests(where: Location, names: list[str], shape: Shape) -> pl.DataFrame:
    """id, file, and one digest of (``_text_key``, kept columns) per row of ``names`` (no vectors read)."""
    compare = [KEY_COLUMN, *shape.kept]
    frames = []
    for name in names:
        for batch in read_batches(where, name, [shape.id, *compare]):
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            frames.append(
                frame.select(
                    pl.col(shape.id).alias("id"),
                    pl.struct(compare).hash(seed=0).alias("digest"),
                    pl.lit(name).alias("file"),
                )
            )
    if not frames:
        return pl.DataFrame(schema={"id": pl.String, "digest": pl.UInt64, "file": pl.String})
    return pl.concat(frames)


def _difference(where, shape, table_id, version, names, gone, came, total) -> Change:
    old = _digests(where, gone, shape)
    new = _digests(where, came, shape)
    if old.schema["id"] != new.schema["id"] and len(old) and len(new):
        raise OutputError(f"the id column {shape.id!r} changed type between versions: {old.schema['id']} and "
                          f"{new.schema['id']}")  # fmt: skip
    joined = new.join(old.select("id", pl.col("digest").alias("before")), on="id", how="left")
    write = joined.filter(pl.col("before").is_null() | (pl.col("before") != pl.col("digest")))
    deleted = old.join(new.select("id"), on="id", how="anti").get_column("id").to_arrow()
    wanted = {
        name: part.get_column("id").to_arrow() for (name,), part in write.partition_by("file", as_dict=True).items()
    }
    return Change(
        table_id,
        version,
        names,
        False,
        wanted=wanted,
        deleted=deleted,
        upserts=len(write),
        total_rows=total,
    )


def read_batches(where: Location, name: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` of the table file ``name``, streamed (a row group at a time)."""
    loc = where.child(name)
    try:
        with loc.fs.open_input_file(loc.fs_path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except FileNotFoundError:
        raise OutputError(f"{loc.uri}: a file of the Delta table is gone; run `batchembed verify`") from None


def upsert_batches(where: Location, change: Change, shape: Shape) -> Iterator[pa.RecordBatch]:
    """The rows a sink writes for ``change``, as record batches of ``shape.columns``, streamed file by file."""
    if change.full:
        for name in change.files:
            yield from read_batches(where, name, shape.columns)
        return
    for name, ids in change.wanted.items():
        for batch in read_batches(where, name, shape.columns):
            keep = pc.is_in(batch.column(0), value_set=ids.cast(batch.schema.field(0).type))
            picked = batch.filter(keep)
            if picked.num_rows:
                yield picked
