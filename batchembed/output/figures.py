"""A refresh's true figures, the same in every mode (one process, ``--shard`` parts, Ray, the batch tier).

* **Files by state**, recorded when a generation starts (``files_record``), so a resumed run says them
  too: added, changed, removed, unchanged and not read, and unchanged but *read again* because they
  shared a packed shard (several small files) with a changed one.
* **Rows by id**, counted once every unit of the generation is committed (``settle``): the ids and text
  keys of the rows the replaced shards held against those of the shards now holding the files the
  generation read — added (a new id), updated (its text changed), removed (the id left the inputs),
  and unchanged rows that were read again. Not rows of replaced shards: a shard of 100,000 rows
  replaced because 50 ids left counts 50 removed.
* **Tokens for the table's current rows** (``current_tokens``): what the vectors of the rows in the
  table cost — per shard, the tokens its own runs paid (killed runs included) plus those carried with
  every vector it took from a replaced shard (a reused text carries its token count as this job's
  tokenizer counts it). It does not fall when a refresh replaces shards by reused vectors, and rises
  by what new texts cost.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from batchembed.human import plural
from batchembed.output.cache import KEY_COLUMN

if TYPE_CHECKING:
    from batchembed.output.input_diff import InputDiff
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.publish.state import Group
    from batchembed.output.store.base import OutputStore


def files_record(generation: int, diff: InputDiff, reading: list[str]) -> dict[str, Any]:
    """A new generation's record: its files by state (``reading``: the files it reads). An unchanged file is
    read again when it shared a packed shard with a changed one (that shard is replaced), or when an
    earlier run stopped before embedding it (``unchanged_unfinished``); the others are not read."""
    unchanged, reading_ = set(diff.unchanged), set(reading)
    packed = {name for s in diff.stale for name in s.inputs} & unchanged & reading_
    unfinished = (unchanged & reading_) - packed
    return {
        "generation": generation,
        "files": {
            "added": sorted(diff.added),
            "changed": sorted(diff.changed),
            "grown": sorted(diff.grown),  # CSV/JSON Lines files that only grew: only their new rows are read
            "removed": sorted(diff.removed),
            "touched": sorted(diff.touched),  # proven unchanged (a touch): not read again
            "unchanged_not_read": len(unchanged - reading_),
            "read_again_packed": sorted(packed),
            "unchanged_unfinished": sorted(unfinished),
        },
        **({"reshaped": list(diff.reshaped)} if diff.reshaped else {}),
    }


def file_counts(record: dict[str, Any]) -> dict[str, int]:
    """The record's files as counts (``_report.json``, ``status``)."""
    files = record.get("files") or {}
    return {
        "files_added": len(files.get("added", [])),
        "files_changed": len(files.get("changed", [])),
        "files_grown": len(files.get("grown", [])),
        "files_removed": len(files.get("removed", [])),
        "files_unchanged_not_read": int(files.get("unchanged_not_read", 0)),
        "files_read_again_packed": len(files.get("read_again_packed", [])),
        "files_unchanged_unfinished": len(files.get("unchanged_unfinished", [])),
    }


def touched(record: dict[str, Any]) -> set[str]:
    """The input files a generation read: added, changed, and unchanged ones read again."""
    files = record.get("files") or {}
    read = ("added", "changed", "grown", "read_again_packed", "unchanged_unfinished")
    return {name for key in read for name in files.get(key, [])}


def settle(
    store: OutputStore,
    record: dict[str, Any],
    replaced: list[ShardRecord],
    current: list[ShardRecord],
    id_column: str | None,
    published: Collection[str] | None,
    compacted: Sequence[Group] = (),
) -> bool:
    """Count the generation's rows by id into ``record``, before it is published (once: the caller saves
    it, so a rerun after a kill keeps what was counted); whether it counted now.

    ``replaced``: the shards the generation retires (those of the published table, ``published``, count:
    a shard an interrupted run wrote and this generation replaced never reached a reader); ``current``:
    every shard of the table now; ``compacted``: the groups of files others compacted shards into (a shard
    compacted, then vacuumed, is read from them)."""
    if not record or "rows" in record or id_column is None:
        return False
    if published is not None:  # a shard others compacted is published as the group's files
        grouped = {name for g in compacted if any(f in published for f in g.files) for name in g.covers}
        replaced = [s for s in replaced if s.name in published or s.name in grouped]
    reading = touched(record)
    after = [s for s in current if reading & set(s.inputs)]
    gone = {s.name for s in replaced if store.size(s.name) is None}
    before = shard_keys(store, [s for s in replaced if s.name not in gone], id_column)
    if gone:
        before = pl.concat([before, _compacted_rows(store, compacted, gone, current, after, id_column)])
    record["rows"] = compare(before, shard_keys(store, after, id_column))
    return True


def _compacted_rows(
    store: OutputStore,
    compacted: Sequence[Group],
    gone: set[str],
    current: list[ShardRecord],
    after: list[ShardRecord],
    id_column: str,
) -> pl.DataFrame:
    """The rows of replaced shards whose files are gone (compacted by others, then vacuumed): the rows of
    the files their groups hold, less those of the groups' other shards, which the refresh keeps (brought
    back under a new attempt name of the same unit: ``restore``)."""
    hit = [g for g in compacted if gone & set(g.covers)]
    frames = [pl.DataFrame(schema={"id": pl.String, "key": pl.Binary})]
    for name in sorted({f for g in hit for f in g.files}):
        table = store.read_table(name, columns=[id_column, KEY_COLUMN])
        frames.append(keys_frame(table.column(0).combine_chunks(), table.column(1).combine_chunks()))
    others = {n for g in hit for n in g.covers} - gone
    read = {s.name for s in after}
    kept = [
        s
        for s in current
        if s.name not in read and (s.name in others or any(n.startswith(s.unit_name + "-") for n in others))
    ]
    kept_ids = shard_keys(store, kept, id_column).get_column("id")
    return pl.concat(frames).filter(~pl.col("id").is_in(kept_ids.implode()))


def rows_by_id(
    store: OutputStore, before: list[ShardRecord], after: list[ShardRecord], id_column: str
) -> dict[str, int]:
    """Ids (by their text form) and text keys of ``before`` against ``after``: rows added, updated,
    removed, and unchanged rows that were read again."""
    return compare(shard_keys(store, before, id_column), shard_keys(store, after, id_column))


def keys_frame(ids: pa.Array, keys: pa.Array) -> pl.DataFrame:
    """Rows as ``compare`` takes them: each id's text form and its text key (null: no vector)."""
    frame = pl.from_arrow(pa.table({"id": ids, "key": keys}))
    return frame.select(pl.col("id").cast(pl.String), pl.col("key").cast(pl.Binary))


def compare(old: pl.DataFrame, new: pl.DataFrame) -> dict[str, int]:
    """Rows by id, ``old`` (id, key) against ``new``: added, updated, removed, unchanged but read again."""
    old, new = old.unique(subset="id", keep="last"), new.unique(subset="id", keep="last")
    both = old.join(new, on="id", how="inner", suffix="_new")
    updated = both.filter(pl.col("key").ne_missing(pl.col("key_new"))).height
    return {
        "added": new.join(old, on="id", how="anti").height,
        "updated": updated,
        "removed": old.join(new, on="id", how="anti").height,
        "unchanged_read_again": both.height - updated,
    }


def shard_keys(store: OutputStore, shards: list[ShardRecord], id_column: str) -> pl.DataFrame:
    """The (id, text key) of every row of ``shards``."""
    frames = [pl.DataFrame(schema={"id": pl.String, "key": pl.Binary})]
    for s in shards:
        names = store.parquet_file(s.name).schema_arrow.names
        if id_column not in names or KEY_COLUMN not in names:
            continue
        table = store.read_table(s.name, columns=[id_column, KEY_COLUMN])
        frames.append(keys_frame(table.column(0).combine_chunks(), table.column(1).combine_chunks()))
    return pl.concat(frames)


def current_tokens(shards: list[ShardRecord]) -> int:
    """Tokens for the rows of ``shards`` (the table's): paid for them, and carried with reused vectors."""
    return sum(s.tokens + s.reused_tokens for s in shards)


def describe(record: dict[str, Any]) -> str:
    """The record in one phrase: files by state, and rows by id when counted."""
    c = file_counts(record)
    if record.get("reshaped") and not (
        c["files_added"] or c["files_changed"] or c["files_removed"] or c["files_grown"]
    ):
        return (
            f"the kept columns changed ({', '.join(record['reshaped'])}); every shard is rewritten from the "
            "vectors it holds, nothing is bought"
        )
    said = (
        f"{plural(c['files_added'], 'file')} added, {c['files_changed']:,} changed, "
        + (f"{c['files_grown']:,} grown (only their new rows are read), " if c["files_grown"] else "")
        + f"{c['files_removed']:,} removed, {c['files_unchanged_not_read']:,} unchanged and not read"
    )
    if c["files_read_again_packed"]:
        said += (
            f", {c['files_read_again_packed']:,} unchanged but read again (they share a packed shard with a "
            "changed file; their texts are not bought again)"
        )
    if c["files_unchanged_unfinished"]:
        said += f", {c['files_unchanged_unfinished']:,} unchanged but not embedded yet (an earlier run stopped)"
    rows = record.get("rows")
    if rows:
        said += f"; rows by id: {rows['added']:,} added, {rows['updated']:,} updated, {rows['removed']:,} removed" + (
            f" ({rows['unchanged_read_again']:,} unchanged rows read again)" if rows["unchanged_read_again"] else ""
        )
    return said
