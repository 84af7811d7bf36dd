"""The ids of an input file's rows as the output holds them: the id column by its text form, or ``file:row``.

One place says what a row's id is for everyone who rebuilds ids from the inputs rather than reading
them from a shard: the tasks that write them (``tasks/ids``), ``verify`` (which proves every shard holds
exactly its input rows) and the restore of a shard from files another writer compacted it into.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.input.files import SourceFile
from batchembed.input.read import iter_batches
from batchembed.job.config import JobConfig


def id_column_name(job: JobConfig) -> str:
    """Output column holding each row's id: the input's id column, else a generated "file:row" column."""
    return job.input.id or ("_row_id" if "id" in job.input.keep else "id")


def generated_ids(source_name: str, positions: np.ndarray) -> pa.Array:
    """Stable ids for rows without an id column: "file:row" (``verify`` rebuilds them the same way)."""
    return pc.binary_join_element_wise(f"{source_name}:", pc.cast(pa.array(positions), pa.string()), "")


def id_text(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Ids by their text form, as the id check compares them: CSV text ids, Parquet integer ids,
    ``string`` and ``large_string`` columns all meet as ``string`` (42 and "42" are one id)."""
    return ids if ids.type == pa.string() else pc.cast(ids, pa.string())


def input_ids(src: SourceFile, id_column: str | None, start: int, end: int) -> pa.Array:
    """The ids (text form) of rows ``start..end`` of ``src``: its ``id_column``, or generated ``file:row``."""
    if not id_column:
        return generated_ids(src.name, np.arange(start, end, dtype=np.int64))
    parts = []
    pos = start
    for batch in iter_batches(src, [id_column], start):
        take = min(batch.num_rows, end - pos)
        parts.append(batch.column(0).slice(0, take))
        pos += take
        if pos >= end:
            break
    return pa.concat_arrays([id_text(p) for p in parts]) if parts else pa.array([], pa.string())
