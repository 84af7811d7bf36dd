"""Checks on the input that run before any request, so a bad input costs no tokens.

* a column the job reads must not appear twice in a file's header/schema;
* the text columns must hold strings, unless ``input.cast_text = true``;
* the id column (``input.id``) must hold no null/empty and no repeated id, across all files.

The id check is one scan of the id column. It keeps 8 bytes per row (a 64-bit hash of each id);
past ``DIGESTS_IN_MEMORY`` rows the hashes are spilled to 64 bucket files by their top bits and
each bucket is sorted on its own, so memory stays bounded for any input size. Only when two hashes
are equal is the column read again to name the id and both rows (``file:row``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import InputError
from batchembed.input.files import SourceFile
from batchembed.input.jsonl import field_type
from batchembed.input.parquet import arrow_schema
from batchembed.input.read import columns_of, iter_batches
from batchembed.job.config import JobConfig
from batchembed.job.templates import text_fields

#: Hashes kept in memory before spilling to bucket files (8 bytes each: 256 MB).
DIGESTS_IN_MEMORY = 32_000_000
_BUCKET_BITS = 6
_SCAN_ROWS = 65_536


def check_inputs(
    job: JobConfig, sources: list[SourceFile], columns: list[str], held: list[tuple[str, pa.Array]] | None = None
) -> None:
    """Raise InputError for duplicate column names, non-string text columns and bad ids (see module doc).

    ``held``: ids a refresh keeps without reading their files again ([(where, ids)], from the output);
    a new row may not repeat one of them either."""
    for src in sources:
        check_unique_columns(src, columns)
    if not job.is_rerank:
        for src in sources:
            check_text_types(src, text_fields(job.input.text), job.input.cast_text)
        if job.input.id:
            check_ids(sources, job.input.id, held=held or [])


def check_unique_columns(source: SourceFile, needed: list[str]) -> None:
    """A column the job reads must appear once: with two, which one is meant is a guess."""
    names = columns_of(source)
    counts = Counter(names)
    for col in needed:
        if counts[col] > 1:
            at = [str(i + 1) for i, name in enumerate(names) if name == col]
            raise InputError(
                f"{source.path}: column {col!r} appears {counts[col]} times (columns {', '.join(at)}); "
                "rename the duplicates so the job reads the right one"
            )


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def check_text_types(source: SourceFile, fields: list[str], cast_text: bool) -> None:
    """Text columns must be strings (CSV columns always are; a JSON Lines field as its first records show
    it); ``input.cast_text`` accepts any type.

    A file without rows holds no text to check: its columns may have any type (a writer that saw no
    value types them ``null``), and it contributes no rows."""
    if cast_text or source.format == "csv" or source.rows == 0:
        return
    for name in fields:
        kind = field_type(source, name) if source.format == "jsonl" else arrow_schema(source).field(name).type
        if not _is_text(kind):
            raise InputError(
                f"{source.path}: text column {name!r} holds {kind}, not strings; set input.cast_text = true "
                'to embed its text form (e.g. 42 -> "42"), or choose another input.text'
            )


class DigestSet:
    """64-bit hashes, in memory up to ``limit`` then in bucket files; finds the repeated ones."""

    def __init__(self, limit: int = DIGESTS_IN_MEMORY) -> None:
        self.limit = limit
        self.parts: list[np.ndarray] = []
        self.held = 0
        self._dir: tempfile.TemporaryDirectory | None = None

    def add(self, digests: np.ndarray) -> None:
        """Remember ``digests`` (uint64)."""
        self.parts.append(digests)
        self.held += len(digests)
        if self.held > self.limit:
            self._spill()

    def _spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="batchembed-ids-")
        values = np.concatenate(self.parts) if self.parts else np.zeros(0, np.uint64)
        buckets = values >> np.uint64(64 - _BUCKET_BITS)
        for b in range(1 << _BUCKET_BITS):
            chosen = values[buckets == b]
            if len(chosen):
                with open(Path(self._dir.name) / f"{b}.bin", "ab") as fh:
                    fh.write(chosen.tobytes())
        self.parts, self.held = [], 0

    def repeated(self) -> np.ndarray:
        """Every hash seen more than once (sorted, unique)."""
        if self._dir is None:
            groups = [np.concatenate(self.parts)] if self.parts else []
        else:
            self._spill()
            groups = (np.fromfile(p, dtype=np.uint64) for p in sorted(Path(self._dir.name).glob("*.bin")))
        found = []
        for values in groups:
            values.sort()
            found.append(np.unique(values[1:][values[1:] == values[:-1]]))
        if self._dir is not None:
            self._dir.cleanup()
        return np.concatenate(found) if found else np.zeros(0, np.uint64)


def _digests(ids: pa.Array) -> np.ndarray:
    return pl.Series(ids).hash(seed=0).to_numpy()


def _id_batches(sources: list[SourceFile], column: str):
    """(ids as strings, their files, the first row of each file's part) over the id column of every file.

    Parts of several small files travel together (up to ``_SCAN_ROWS``), so hashing is per block."""
    parts: list[tuple[SourceFile, int, pa.Array]] = []
    held = 0
    for src in sources:
        pos = src.tail[0] if src.tail else 0  # a grown file: its held rows' ids come from the output
        for batch in iter_batches(src, [column], pos, _SCAN_ROWS):
            ids = batch.column(0)
            parts.append((src, pos, ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())))
            pos += batch.num_rows
            held += batch.num_rows
            if held >= _SCAN_ROWS:
                yield parts
                parts, held = [], 0
    if parts:
        yield parts


def _where(parts, index: int) -> tuple[SourceFile, int]:
    """The file and row of position ``index`` of a block of parts."""
    for src, pos, ids in parts:
        if index < len(ids):
            return src, pos + index
        index -= len(ids)
    raise IndexError(index)


def check_ids(
    sources: list[SourceFile],
    column: str,
    limit: int = DIGESTS_IN_MEMORY,
    held: list[tuple[str, pa.Array]] | None = None,
) -> None:
    """No null or empty id, and no id twice (across all files and the ``held`` ids of rows already in
    the output); the error names the id and its rows."""
    held = held or []
    seen = DigestSet(limit)
    for _, ids in held:
        seen.add(_digests(ids))
    for parts in _id_batches(sources, column):
        ids = pa.concat_arrays([p[2] for p in parts])
        missing = pc.or_(pc.is_null(ids), pc.equal(ids, "")).fill_null(True)
        if pc.any(missing).as_py():
            src, row = _where(parts, int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0]))
            raise InputError(
                f"{src.path}: row {row} ({src.name}:{row}) has no id: input.id column {column!r} is null or empty"
            )
        seen.add(_digests(ids))
    suspects = seen.repeated()
    if not len(suspects):
        return
    rows: dict[str, list[str]] = {}
    for where, ids in held:
        for i in np.flatnonzero(np.isin(_digests(ids), suspects)):
            rows.setdefault(ids[int(i)].as_py(), []).append(where)
    for parts in _id_batches(sources, column):
        ids = pa.concat_arrays([p[2] for p in parts])
        for i in np.flatnonzero(np.isin(_digests(ids), suspects)):
            src, row = _where(parts, int(i))
            rows.setdefault(ids[int(i)].as_py(), []).append(f"{src.name}:{row}")
    repeated = {k: v for k, v in rows.items() if len(v) > 1}
    if repeated:  # else only hashes collided
        first, where = next(iter(repeated.items()))
        more = f" ({len(repeated)} ids are repeated in all)" if len(repeated) > 1 else ""
        raise InputError(
            f"input.id {first!r} appears in rows {where[0]} and {where[1]}"
            + (f" (and {len(where) - 2} more)" if len(where) > 2 else "")
            + f"{more}; ids must be unique: fix the input, or drop input.id to use generated 'file:row' ids"
        )
