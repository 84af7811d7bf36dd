"""The nearest rows of an output's current Delta version to a query vector, in bounded memory.

The table is read file by file, record batch by record batch (``BATCH_ROWS`` rows; Parquet's own file
reader, which decodes a vector column in about half the time the dataset scanner takes), reading only
the vector column and the columns a ``--where`` filter names; each batch's cosine scores
are folded into the best ``k`` seen so far (positions only). The winning rows' other columns are then
read back from their files by position. Memory is a few batches and ``k`` rows, whatever the table's
size; time is one pass over the vectors.

``--where`` is a SQL expression over the columns the output holds (its id and ``input.keep`` columns),
parsed by polars (``polars.sql_expr``): comparisons, ``AND``/``OR``/``NOT``, ``IN (...)``, ``LIKE``,
``BETWEEN``, ``IS [NOT] NULL``, arithmetic and functions polars' SQL knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from batchembed.errors import OutputError, UsageError
from batchembed.job.config import JobConfig
from batchembed.output.parts import load_whole
from batchembed.output.publish.stores import delta_storage_options, table_uri
from batchembed.output.store import open_store
from batchembed.suggest import did_you_mean, listing
from batchembed.tasks.ids import id_column_name

#: Rows per record batch: 16,384 rows of 1,024 float32 dims are 64 MB.
BATCH_ROWS = 16_384
#: Output columns a search never shows (the text key is an internal index).
HIDDEN = ("_text_key",)


@dataclass
class Table:
    """The output's current Delta version, as ``search`` reads it."""

    uri: str
    dataset: Any  # pyarrow.dataset.Dataset of the table's current files
    fingerprint: dict[str, Any]
    column: str  # the vector column
    dim: int
    id_column: str
    shown: list[str] = field(default_factory=list)  # columns printed beside the id and score
    text_column: str | None = None  # the embedded text's column, when the job keeps it

    def filter_for(self, where: str | None) -> Filter | None:
        """``--where`` as a checked filter (None without one)."""
        return None if where is None else Filter.parse(where, [c for c in self.dataset.schema.names if c not in HIDDEN])


@dataclass
class Filter:
    """A ``--where`` expression and the columns it reads."""

    text: str
    expr: pl.Expr
    columns: list[str]

    @classmethod
    def parse(cls, text: str, columns: list[str]) -> Filter:
        """Parse with polars' SQL; every column it names must be one the table holds."""
        try:
            expr = pl.sql_expr(text)
            names = expr.meta.root_names()
        except (pl.exceptions.PolarsError, ValueError) as exc:
            raise UsageError(
                f"--where {text!r}: not an expression polars' SQL can read ({_first_line(exc)}); "
                "e.g. --where \"module = 'os' AND lines > 3\""
            ) from None
        for name in names:
            if name not in columns:
                raise UsageError(
                    f"--where {text!r}: the table has no column {name!r}{did_you_mean(name, columns)} "
                    f"(columns: {listing(columns)}); only the id and the input.keep columns are in the output"
                )
        return cls(text, expr, list(dict.fromkeys(names)))

    def mask(self, batch: pa.RecordBatch) -> np.ndarray:
        """Which rows of ``batch`` (holding at least ``columns``) the filter selects; null counts as no."""
        frame = pl.from_arrow(pa.Table.from_batches([batch]).select(self.columns))
        try:
            picked = frame.select(self.expr.fill_null(False).alias("_m")).to_series()
        except pl.exceptions.PolarsError as exc:
            raise UsageError(f"--where {self.text!r}: {_first_line(exc)}") from None
        if picked.dtype != pl.Boolean:
            raise UsageError(f"--where {self.text!r} is not a condition (it gives {picked.dtype}, not true/false)")
        if len(picked) == 1 and batch.num_rows != 1:  # a constant condition
            return np.full(batch.num_rows, bool(picked[0]))
        return picked.to_numpy().astype(bool)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_table(job: JobConfig) -> Table:
    """The job's output as a searchable table: its current Delta version, the model it was written with."""
    import deltalake  # heavy: imported only to read a table

    if job.is_rerank:
        raise UsageError("search finds the rows nearest to a text in an embed job's output; this is a rerank job")
    store = open_store(job)
    manifest, _ = load_whole(store)
    if manifest is None:
        raise OutputError(f"{store.uri}: no batchembed output here yet: run the job first (batchembed run JOB)")
    uri = table_uri(store.where)
    try:
        delta = deltalake.DeltaTable(uri, storage_options=delta_storage_options(store.where) or None)
    except deltalake.exceptions.TableNotFoundError:
        raise OutputError(
            f"{store.uri}: no Delta table yet (a run publishes it once its shards are written): run the job first"
        ) from None
    # the current version's files, read as Parquet (their own fixed-size vector type, no cast to Delta's list)
    adds = pa.table(delta.get_add_actions())
    paths = [store.where.child(p).fs_path for p in adds.column("path").to_pylist()]
    if not paths:
        raise OutputError(f"{store.uri}: the table holds no rows yet (every row failed or was skipped?)")
    dataset = ds.dataset(paths, filesystem=store.where.fs, format="parquet")
    schema = dataset.schema
    column = job.output.column
    if column not in schema.names:
        raise OutputError(f"{store.uri}: the table has no vector column {column!r} (output.column)")
    kind = schema.field(column).type
    dim = kind.list_size if pa.types.is_fixed_size_list(kind) else 0
    id_column = id_column_name(job)
    keep = [c for c in job.input.keep if c in schema.names and c != id_column]
    text = job.input.text if job.input.text in keep else None
    return Table(store.uri, dataset, manifest.fingerprint, column, dim, id_column, keep, text)


def nearest(table: Table, query: np.ndarray, k: int, where: Filter | None = None) -> pa.Table:
    """The ``k`` rows of highest cosine similarity to ``query`` (unit length), best first, with a ``score``
    column; among the rows ``where`` selects. Rows without a vector never match."""
    if k < 1:
        raise UsageError(f"-k must be at least 1, got {k}")
    read = [table.column, *(where.columns if where else [])]
    best = _Best(k)
    fragments = list(table.dataset.get_fragments())
    for number, fragment in enumerate(fragments):
        offset = 0
        for batch in _batches(table, fragment.path, list(dict.fromkeys(read))):
            rows = _candidates(batch, table.column, where)
            if len(rows):
                best.add(_scores(batch.column(table.column), rows, query, table.dim), number, offset + rows)
            offset += batch.num_rows
    return _rows(table, fragments, best)


def _batches(table: Table, path: str, columns: list[str]):
    """The record batches of one of the table's files, only ``columns``."""
    with table.dataset.filesystem.open_input_file(path) as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _candidates(batch: pa.RecordBatch, column: str, where: Filter | None) -> np.ndarray:
    """Positions in ``batch`` of rows with a vector (and selected by ``where``)."""
    keep = batch.column(column).is_valid().to_numpy(zero_copy_only=False)
    if where is not None:
        keep &= where.mask(batch)
    return np.flatnonzero(keep)


def _scores(vectors: pa.Array, rows: np.ndarray, query: np.ndarray, dim: int) -> np.ndarray:
    """Cosine similarity of the vectors at ``rows`` to ``query`` (unit length)."""
    if len(rows) != len(vectors):
        vectors = vectors.take(pa.array(rows))
    if isinstance(vectors, pa.FixedSizeListArray):  # the shards' own type: the values, without a copy
        flat = vectors.values.slice(vectors.offset * dim, len(vectors) * dim)
    else:
        flat = pc.list_flatten(vectors)
    matrix = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return (matrix @ query) / np.where(norms > 0, norms, 1.0)


class _Best:
    """The ``k`` best (score, file, row) seen so far."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.empty(0, np.float32)
        self.files = np.empty(0, np.int64)
        self.rows = np.empty(0, np.int64)

    def add(self, scores: np.ndarray, file: int, rows: np.ndarray) -> None:
        if len(scores) > self.k:
            top = np.argpartition(-scores, self.k - 1)[: self.k]
            scores, rows = scores[top], rows[top]
        self.scores = np.concatenate([self.scores, scores.astype(np.float32)])
        self.files = np.concatenate([self.files, np.full(len(scores), file, np.int64)])
        self.rows = np.concatenate([self.rows, rows.astype(np.int64)])
        if len(self.scores) > self.k:
            top = np.argpartition(-self.scores, self.k - 1)[: self.k]
            self.scores, self.files, self.rows = self.scores[top], self.files[top], self.rows[top]

    def ordered(self) -> np.ndarray:
        """Positions in the best arrays, best first (ties by file and row, so the order is stable)."""
        return np.lexsort((self.rows, self.files, -self.scores))


def _rows(table: Table, fragments: list, best: _Best) -> pa.Table:
    """The winners' id, shown columns and score, read back from their files by position, best first."""
    columns = [table.id_column, *table.shown]
    order = best.ordered()
    pieces: dict[int, pa.Table] = {}
    for number in np.unique(best.files):
        rows = np.sort(best.rows[best.files == number])
        got = fragments[int(number)].take(pa.array(rows), columns=columns)
        pieces[int(number)] = got.append_column("_row", pa.array(rows, pa.int64()))
    out = []
    for i in order:
        piece = pieces[int(best.files[i])]
        at = int(np.searchsorted(piece.column("_row").to_numpy(), best.rows[i]))
        out.append(piece.slice(at, 1).drop_columns(["_row"]))
    schema = pa.schema([table.dataset.schema.field(c) for c in columns])
    result = pa.concat_tables(out) if out else schema.empty_table()
    return result.append_column("score", pa.array(best.scores[order], pa.float32()))
