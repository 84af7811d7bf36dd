"""Parquet shard writing: rows appended in order to a temporary file, then published by ``atomic``.

A shard is only ever visible under its final name once it is complete and durable, so a reader
(or a resume after ``kill -9``) never sees half a shard. Vectors are stored as
``fixed_size_list<float32>[dim]`` built straight from the float32 buffer, without Python lists.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.fs.atomic import publish, temp_path
from batchembed.output.checksum import new_hasher, recorded

#: A shard being written is flushed to disk every this many bytes (see ``ShardWriter.write``).
SYNC_BYTES = 64 << 20


def vector_array(vectors: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """A ``fixed_size_list<float32>[dim]`` array over an (n, dim) float32 buffer; null where not ``valid``."""
    _n, dim = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    mask = None if valid is None or valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


@dataclass(frozen=True)
class WrittenFile:
    """What the manifest records about a committed file."""

    name: str
    rows: int
    size: int
    checksum: str  # ``checksum.recorded``: ``<algorithm>:<hex>``


def parquet_writer(sink, schema: pa.Schema, compression: str) -> pq.ParquetWriter:
    """A shard's Parquet writer on ``sink`` (a path or a binary file object)."""
    # Vector columns are stored plain: float vectors barely compress (4% with snappy) and
    # dictionary encoding and min/max statistics over them are wasted work (40% of write time).
    vectors = {f.name for f in schema if pa.types.is_fixed_size_list(f.type)}
    others = [f.name for f in schema if f.name not in vectors]
    return pq.ParquetWriter(
        sink,
        schema,
        compression={f.name: "none" if f.name in vectors else compression for f in schema},
        use_dictionary=others,
        write_statistics=others,
    )


_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _WrittenDigest:
    """The checksum of a file being appended to by another writer, taken from the page cache as it grows
    (a read-only memory map of the new bytes), so it is ready at commit (hashing a finished 400 MB shard
    with sha256 took ~0.5 s at the end of every unit, with nothing else to do) while the writer stays
    native: Parquet writes straight to the file, with no Python callback and no copy per write."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.hash = new_hasher()
        self.size = 0  # bytes hashed

    def update(self, size: int) -> None:
        """Hash the file's bytes up to ``size`` (what the writer has written so far)."""
        if size <= self.size:
            return
        start = self.size - self.size % mmap.ALLOCATIONGRANULARITY
        with (
            mmap.mmap(self.fd, size - start, prot=mmap.PROT_READ, offset=start) as view,
            memoryview(view) as data,
        ):
            self.hash.update(data[self.size - start :])  # releases the GIL on large buffers
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShardWriter:
    """Writes one Parquet file: ``write`` tables in order, then ``commit`` (or ``abort``)."""

    def __init__(
        self,
        directory: Path,
        name: str,
        schema: pa.Schema,
        compression: str = "snappy",
        before_publish: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.before_publish = before_publish  # the store's fencing check, just before the rename
        self.name = name
        self.final = directory / name
        self.tmp = temp_path(self.final)
        self.schema = schema
        self.rows = 0
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._synced = 0  # bytes already flushed to disk by ``write``
        try:
            self._digest = _WrittenDigest(self.tmp)
            self._writer = parquet_writer(self._sink, schema, compression)
        except BaseException:
            self._sink.close()
            raise

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (cast to the shard's schema) as one row group.

        Every ``SYNC_BYTES`` written are flushed to disk here (on the writer's thread, while requests
        go on), so the fsync at ``commit`` finds little left to do: it used to wait ~0.2 s per 400 MB."""
        if table.num_rows:
            self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
            self.rows += table.num_rows
            size = self._sink.tell()
            self._digest.update(size)
            if size - self._synced >= SYNC_BYTES:
                _datasync(self._digest.fd)
                self._synced = size

    def commit(self) -> WrittenFile:
        """Close, fsync, rename into place, and return size and checksum for the manifest."""
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        try:
            self._digest.update(size)
        finally:
            self._digest.close()
        digest = recorded(self._digest.hash)
        if self.before_publish is not None:
            try:
                self.before_publish()
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
        publish(self.tmp, self.final)  # fsync, rename, fsync the directory
        return WrittenFile(self.name, self.rows, size, digest)

    def abort(self) -> None:
        """Drop the temporary file."""
        with contextlib.suppress(Exception):  # the file is thrown away; its writer state does not matter
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self._digest.close()
        self.tmp.unlink(missing_ok=True)


def shard_metadata(meta: dict) -> dict[str, str]:
    """Parquet key/value metadata (one JSON document under "batchembed") from a task's metadata."""
    return {"batchembed": json.dumps(meta)}
