"""The output-store interface: everything a run, ``status`` and ``verify`` do to an output.

A run's protocol, whatever the store: take the writer lock; load the manifest; delete what it does
not record; write each shard (``shard_writer`` ... ``commit``), then record it by replacing the
manifest (the commit point); write ``_SUCCESS`` last. ``status`` and ``verify`` only read.
"""

from __future__ import annotations

import abc
import contextlib
import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.fs.location import Location
from batchembed.output.checksum import hasher_for, matches
from batchembed.output.layout import COMMITS, MANIFEST, manifest_names
from batchembed.output.store.locks import WriterLock


class OutputStore(abc.ABC):
    """One output directory or prefix. Names are relative ("part-00000.parquet", "_failed/x")."""

    def __init__(self, where: Location) -> None:
        self.where = where
        self.lock: WriterLock | None = None
        #: The manifest and commit journal this run reads and replaces: the whole job's, or one
        #: ``--shard I/N`` part's (see ``use_part``).
        self.manifest_name = MANIFEST
        self.journal_name = COMMITS

    def use_part(self, shard: tuple[int, int] | None) -> None:
        """Read and write the manifest of one ``--shard I/N`` part (``_manifest.shard-0001-of-0004.json``)."""
        self.manifest_name, self.journal_name = manifest_names(shard)

    @property
    def uri(self) -> str:
        """The output as a user wrote it (no credentials)."""
        return self.where.uri

    def describe(self, name: str) -> str:
        """``name`` inside this output, for messages."""
        return str(self.where.child(name))

    # ------------------------------------------------------------------------------ locking

    @abc.abstractmethod
    def acquire(self, shard: tuple[int, int] | None = None) -> WriterLock:
        """Take the one-writer lock (``OutputLocked`` naming the holder if a live run has it)."""

    @abc.abstractmethod
    def gate(self) -> contextlib.AbstractContextManager[WriterLock]:
        """The output-wide admission mutex, held for the moment a writer is admitted (``store.admission``)."""

    @abc.abstractmethod
    def live_writers(self) -> dict[tuple[int, int] | None, str]:
        """The writers holding a live lock or lease now: {None (a whole run) or (I, N): who, for messages}.

        Called under the gate; on object stores it retires the expired leases it meets."""

    def release(self) -> None:
        """Release the lock taken by ``acquire`` (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def read_lock(self, name: str) -> tuple[dict | None, bool]:
        """(the holder written in lock ``name`` (``_lease/job``) or None, whether its holding expires)."""
        raise NotImplementedError

    def fence(self) -> None:
        """Before any write: raise ``LeaseLost`` if this run has lost its lock."""
        if self.lock is not None:
            self.lock.check()

    # ------------------------------------------------------------------------------- writing

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create the output directory/prefix if the store needs one."""

    @abc.abstractmethod
    def shard_writer(self, name: str, schema: pa.Schema, compression: str) -> Any:
        """A writer with ``write(table)``, ``commit() -> WrittenFile`` (visible whole) and ``abort()``."""

    @abc.abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a small file so that it appears whole or not at all."""

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write a small Parquet table (failed rows) whole-or-nothing."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(name, buf.getvalue())

    @abc.abstractmethod
    def replace_manifest(self, data: bytes) -> None:
        """Replace the manifest atomically; on object stores only if nobody else replaced it meanwhile."""

    def append_commit(self, line: bytes) -> bool:
        """Append one commit line durably to the output's commit journal; False if the store cannot
        append (object stores), in which case the caller replaces the manifest instead."""
        return False

    def read_commits(self) -> bytes | None:
        """The commit journal's bytes, None if there is none (or the store keeps no journal)."""
        return None

    def drop_commits(self) -> None:
        """Remove the commit journal once its lines are folded into the manifest (none kept by default)."""
        return None

    def abort_stale_uploads(self, owns: Any = None) -> list[str]:
        """Abort the incomplete uploads of shards this writer owns (``owns(name)``; all when None) that a
        killed writer left; the names aborted (none where a store has no such thing: a local disk)."""
        return []

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete a file (no error if it is not there)."""

    # ------------------------------------------------------------------------------- reading

    def manifest_stamp(self) -> Any:
        """What identifies the manifest's current version, found cheaply (no body read); None when this
        store cannot tell, and then a manifest read earlier is never reused (``opening.preload``)."""
        return None

    @abc.abstractmethod
    def read_manifest(self) -> bytes | None:
        """The manifest's bytes, None if there is none (remembers its version for the next replace)."""

    @abc.abstractmethod
    def list_names(self) -> list[str]:
        """Every file in the output (relative names, recursive), the lease directory excluded."""

    @abc.abstractmethod
    def size(self, name: str) -> int | None:
        """Size in bytes, None if the file is not there."""

    @abc.abstractmethod
    def open_read(self, name: str) -> Any:
        """A source pyarrow readers accept (a path, or a random-access remote file)."""

    @abc.abstractmethod
    def read_bytes(self, name: str) -> bytes | None:
        """A small file's bytes, None if it is not there."""

    def exists(self, name: str) -> bool:
        """Whether ``name`` is in the output."""
        return self.size(name) is not None

    def parquet_file(self, name: str) -> pq.ParquetFile:
        """A Parquet file of the output, opened for footer and row-group reads."""
        return pq.ParquetFile(self.open_read(name))

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """A whole Parquet file of the output (or some of its columns)."""
        return pq.read_table(self.open_read(name), columns=columns)

    def matches(self, name: str, checksum: str) -> bool:
        """Whether a file's bytes (streamed) give ``checksum`` (as ``checksum.recorded`` wrote it, or an older
        output's bare sha256 hex)."""
        digest = hasher_for(checksum)
        src = self.open_read(name)
        fh = open(src, "rb") if isinstance(src, str) else src  # noqa: SIM115 - closed below
        try:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        finally:
            fh.close()
        return matches(checksum, digest)
