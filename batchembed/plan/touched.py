"""Which "changed" input files were only touched: what the output holds of them would be written again as is.

A file's identity is its size and modification time, so ``touch`` (or a copy that keeps the bytes) makes
it "changed". ``plan`` reads a changed file anyway; for one whose size is unchanged it also proves, or
fails to prove, that nothing the output holds of it differs: the same rows in the same order, each with
the same id, the same kept columns and the same text as embedded (its ``_text_key``: the prefix and any
cut applied as a run applies them). Proven, the file is shown as "touched, content unchanged"; anything
else (a row more, a failed row, a shard packing it with other files, a rerank job) leaves it "changed".
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.input.files import SourceFile
from batchembed.input.read import iter_batches
from batchembed.output.cache import KEY_COLUMN
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.tasks.ids import id_column_name
from batchembed.tasks.memo import key_array, text_keys
from batchembed.tasks.texts import add_prefix, blank_mask, build_texts
from batchembed.tasks.tokens import over_limit


def touched_files(
    store: Any, manifest: Manifest, changed: list[str], sources: list[SourceFile], task: Any
) -> list[str]:
    """The ``changed`` files proven to hold exactly what the output holds of them (embed jobs only)."""
    if not hasattr(task, "prefix") or not hasattr(task, "counter"):
        return []
    by_name = {s.name: s for s in sources}
    recorded: dict[str, dict] = {}
    for shard in manifest.shards:
        recorded.update(shard.inputs)
    out = []
    for name in changed:
        src = by_name.get(name)
        if src is None or recorded.get(name, {}).get("size") != src.size:
            continue
        pieces = _pieces(name, [s for s in manifest.shards if name in s.inputs])
        if pieces is not None and _same(store, pieces, src, task):
            out.append(name)
    return out


def _pieces(name: str, shards: list[ShardRecord]) -> list[tuple[str, int, int | None]] | None:
    """Where the output holds every row of file ``name``, in order: (shard, first row, rows or None for all);
    None when that cannot be said (a failed row missing, a range not reaching the file's end)."""
    if any(s.failed for s in shards):
        return None
    packed = [s for s in shards if s.kind == "files"]
    if len(packed) == 1 and len(shards) == 1:  # a small file held whole beside others
        offset = 0
        for held, rows in packed[0].files:
            if held == name:
                return [(packed[0].name, offset, int(rows))]
            offset += int(rows)
        return None
    ranges = sorted((s for s in shards if s.kind == "range" and s.file == name), key=lambda s: s.start)
    if len(ranges) != len(shards) or not ranges or ranges[0].start != 0 or not ranges[-1].eof:
        return None
    if any(a.end != b.start for a, b in itertools.pairwise(ranges)):
        return None
    return [(s.name, 0, None) for s in ranges]


def _same(store: Any, pieces: list[tuple[str, int, int | None]], src: SourceFile, task: Any) -> bool:
    """Whether ``src`` now gives exactly the rows the ``pieces`` of the output hold."""
    job = task.job
    id_col = id_column_name(job)
    shown = [id_col] if job.input.id else []
    columns = [*shown, *job.input.keep, KEY_COLUMN]
    tables = [store.read_table(shard, columns=columns) for shard, _, _ in pieces]
    held = pa.concat_tables(t.slice(at, rows) for t, (_, at, rows) in zip(tables, pieces, strict=True))
    now = pa.concat_tables(pa.Table.from_batches([b]) for b in iter_batches(src, task.columns))
    if now.num_rows != held.num_rows:
        return False
    for name in [*shown, *job.input.keep]:
        source = job.input.id if name == id_col and job.input.id else name
        if not _text_of(now.column(source)).equals(_text_of(held.column(name))):
            return False
    return _keys(now, task).equals(held.column(KEY_COLUMN).combine_chunks())


def _text_of(column: pa.ChunkedArray) -> pa.Array:
    """A column by its text form (ids and kept values compare as the id check compares ids)."""
    column = column.combine_chunks()
    return column if column.type == pa.string() else pc.cast(column, pa.string())


def _keys(table: pa.Table, task: Any) -> pa.Array:
    """Each row's ``_text_key`` as a run would write it: null for a blank text, else the key of the text sent
    (cut as the run cuts it: ``tokens.over_limit`` decides, the counter cuts)."""
    texts = add_prefix(build_texts(table, task.job.input.text), task.prefix)
    blank = blank_mask(texts)
    if blank.all():
        return pa.nulls(len(texts), pa.binary(16))
    sent = texts.filter(pa.array(~blank))
    values = sent.to_pylist()
    too_long, _ = over_limit(task.counter, sent, task.counter.count(sent), task.input_tokens)
    for i in too_long:
        values[int(i)] = task.counter.truncate(values[int(i)], task.input_tokens)
    keys = key_array(text_keys(values))
    positions = np.maximum(np.cumsum(~blank) - 1, 0)
    return pc.if_else(pa.array(blank), pa.scalar(None, pa.binary(16)), keys.take(pa.array(positions)))
