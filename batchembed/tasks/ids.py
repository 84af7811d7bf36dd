"""Each output row's id: the input's id column, or a stable generated ``"file:row"`` (``verify`` rebuilds
generated ids the same way), and the file row number of each row of a chunk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchembed.input.row_ids import generated_ids, id_column_name  # noqa: F401 - where tasks find them
from batchembed.input.units import Chunk
from batchembed.job.config import JobConfig


def row_ids(table: pa.Table, job: JobConfig, chunk: Chunk, positions: np.ndarray) -> pa.Array:
    """The id of each row: the id column, or "file:row" (a chunk may hold rows of several small files)."""
    if job.input.id:
        col = table.column(job.input.id)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    parts = [generated_ids(src.name, positions[a:b]) for src, a, b in chunk.segments()]
    return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]


def chunk_positions(chunk: Chunk) -> np.ndarray:
    """File row number of each row of a chunk."""
    if chunk.rows is not None:
        return np.asarray(chunk.rows, dtype=np.int64)
    return np.arange(chunk.first_row, chunk.first_row + chunk.table.num_rows, dtype=np.int64)
