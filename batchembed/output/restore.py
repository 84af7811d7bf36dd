"""A shard brought back from the files another writer compacted it into, without a request.

When a lakehouse compacts batchembed's shards (``OPTIMIZE``) and vacuums, the compacted files are the
only copy of their rows. The table keeps them as long as no shard they cover changes. Once a refresh
must replace one of those shards, the compacted files leave the table, and every *other* shard they
cover comes back as a file of batchembed's own: its rows (found by id: the shard's input files are
unchanged, so their ids say which rows it held, in which order) are copied out of the compacted files
under a new attempt name, and the manifest records the new file in the old one's place. No text is
sent, no vector recomputed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import OutputError
from batchembed.input.row_ids import id_text, input_ids
from batchembed.output.cache import KEY_COLUMN
from batchembed.output.layout import TRUNCATED_DIR
from batchembed.output.publish.files import DIMENSION_KEY

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.manifest import Manifest, ShardRecord
    from batchembed.output.store.base import OutputStore


def shard_ids(
    store: OutputStore, shard: ShardRecord, sources: dict[str, SourceFile], id_column: str | None
) -> pa.Array:
    """The ids (text form) ``shard`` holds, in its row order, rebuilt from its unchanged input files."""
    if shard.kind == "retry":
        wanted = [id_text(store.read_table(f, columns=["id"]).column(0)) for f in shard.resolves]
        ids = pa.chunked_array([c for w in wanted for c in w.chunks], pa.string()).combine_chunks()
        return pc.filter(ids, pc.invert(pc.is_in(ids, value_set=_failed_ids(store, shard))))
    spans = [(shard.file, shard.start, shard.end)] if shard.kind == "range" else [(n, 0, r) for n, r in shard.files]
    failed = store.read_table(shard.failed_file, columns=["file", "row"]) if shard.failed_file else None
    parts = []
    for name, start, end in spans:
        src = sources.get(name)
        if src is None:
            raise OutputError(f"{shard.name}: its input {name} is not an input any more")
        ids = input_ids(src, id_column, start, end)
        if failed is not None:
            mine = pc.equal(failed.column("file"), name).to_numpy(zero_copy_only=False)
            gone = failed.column("row").to_numpy()[mine]
            ids = ids.filter(pa.array(~np.isin(np.arange(start, end), gone)))
        parts.append(ids)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def _failed_ids(store: OutputStore, shard: ShardRecord) -> pa.Array:
    if not shard.failed_file:
        return pa.array([], pa.string())
    return id_text(store.read_table(shard.failed_file, columns=["id"]).column(0)).combine_chunks()


def restore(
    store: OutputStore,
    manifest: Manifest,
    shards: Sequence[ShardRecord],
    group_files: Sequence[str],
    sources: dict[str, SourceFile],
    id_column: str,
    job_id: str | None,
    compression: str,
) -> int:
    """Write each of ``shards`` (whose files are gone) again from ``group_files`` and record the new files in
    the manifest in their place (the caller saves it). Returns the rows restored. ``OutputError`` when the
    compacted files do not hold exactly a shard's rows."""
    wanted = {s.name: shard_ids(store, s, sources, job_id) for s in shards}
    pieces: dict[str, list[tuple[np.ndarray, pa.Table]]] = {name: [] for name in wanted}
    for name in group_files:
        table = store.read_table(name)
        ids = id_text(table.column(id_column).combine_chunks())
        for shard, expected in wanted.items():
            where = pc.index_in(expected, value_set=ids).to_numpy(zero_copy_only=False)
            found = np.flatnonzero(~np.isnan(where.astype(float)))
            if len(found):
                pieces[shard].append((found, table.take(pa.array(where[found].astype(np.int64)))))
    schema = _shard_schema(store, manifest, group_files[0])
    rows = 0
    for shard in shards:
        expected = wanted[shard.name]
        order = np.concatenate([p for p, _ in pieces[shard.name]]) if pieces[shard.name] else np.zeros(0, np.int64)
        if len(order) != len(expected) or len(np.unique(order)) != len(expected):
            raise OutputError(
                f"{store.describe(shard.name)} is gone and the files another writer compacted it into hold "
                f"{len(np.unique(order))} of its {len(expected)} rows: it cannot be restored. Run with --restart "
                "to rebuild the output (every row is embedded again)."
            )
        table = pa.concat_tables([t for _, t in pieces[shard.name]]).take(pa.array(np.argsort(order, kind="stable")))
        _replace(store, manifest, shard, _as_shard(table, schema), compression)
        rows += table.num_rows
    return rows


def _shard_schema(store: OutputStore, manifest: Manifest, sample: str) -> pa.Schema:
    """Our shards' schema: a shard of ours still there, else the compacted file's with our vector and key types."""
    for s in manifest.shards + manifest.retiring:
        if store.exists(s.name):
            return store.parquet_file(s.name).schema_arrow
    fields = []
    for f in store.parquet_file(sample).schema_arrow:
        kind = f.type
        if f.name == KEY_COLUMN:
            kind = pa.binary(16)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            dim = (f.metadata or {}).get(DIMENSION_KEY.encode())
            if dim is not None:
                kind = pa.list_(pa.float32(), int(dim))
        elif pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            kind = pa.string()
        fields.append(pa.field(f.name, kind, metadata=f.metadata))
    return pa.schema(fields)


def _as_shard(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows of a compacted file in our shard's types (fixed-size vectors and text keys, our column order)."""
    columns = []
    for f in schema:
        column = table.column(f.name).combine_chunks()
        if pa.types.is_fixed_size_list(f.type) and not pa.types.is_fixed_size_list(column.type):
            dim = f.type.list_size
            blank = pa.scalar([0.0] * dim, column.type)  # a null vector keeps its slots in a fixed-size list
            values = pc.list_flatten(pc.fill_null(column, blank)).cast(f.type.value_type)
            if len(values) != len(column) * dim:
                raise OutputError(f"column {f.name}: a vector of another length than {dim}")
            column = pa.FixedSizeListArray.from_arrays(values, dim, mask=column.is_null())
        elif column.type != f.type:
            column = column.cast(f.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _replace(store: OutputStore, manifest: Manifest, shard: ShardRecord, table: pa.Table, compression: str) -> None:
    name = f"{shard.unit_name}-{os.urandom(4).hex()}.parquet"
    writer = store.shard_writer(name, table.schema, compression)
    writer.write(table)
    written = writer.commit()
    if shard.truncated:  # the cut rows' file is named after the shard's file
        cut = store.read_bytes(f"{TRUNCATED_DIR}/{shard.name}")
        if cut is not None:
            store.write_bytes(f"{TRUNCATED_DIR}/{name}", cut)
    record = dataclasses.replace(shard, name=name, size=written.size, checksum=written.checksum)
    manifest.shards = [record if s.name == shard.name else s for s in manifest.shards]
