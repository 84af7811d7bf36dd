"""The output store on S3, GCS or Azure Blob: exactly once without rename.

Object stores have no atomic rename, but a PUT (or a completed multipart upload) appears whole or
not at all, and a PUT can be made conditional. So:

* a shard is uploaded straight to its final key while it is written (a multipart upload, completed
  at commit, so it appears whole or not at all); it counts only once the manifest records it;
* the manifest is the only truth, replaced with a conditional PUT on the ETag this run last saw
  (create-only for the first one): a run that lost the output to another cannot overwrite it;
* a resume deletes every object the manifest does not record; ``_SUCCESS`` is written last;
* one writer: a lease object (``_lease/job.json``, see :mod:`batchembed.output.store.lease`), and every
  write first checks the lease is still ours (fencing).

Data reads go through ``pyarrow.fs`` (ranged reads); writes, listings and deletes through obstore.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.failpoints import failpoint
from batchembed.fs.buckets import (
    NOT_FOUND,
    STORE_ERRORS,
    bucket_missing,
    connect,
    message,
    no_bucket,
    obstore_module,
    version_of,
)
from batchembed.fs.location import Location
from batchembed.output.checksum import new_hasher, recorded
from batchembed.output.layout import GATE, LEASE_DIR, lease_name, writer_of
from batchembed.output.shard_writer import WrittenFile, parquet_writer
from batchembed.output.store.base import OutputStore
from batchembed.output.store.lease import ObjectLease, gate, live_writers
from batchembed.output.store.uploads import abort_stale_uploads


class _HashingSink:
    """A write-only file for pyarrow that hashes and counts what passes on to an obstore writer."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.hash = new_hasher()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        """Parts are sent as they fill; nothing to do until the upload is completed."""

    def close(self) -> None:
        """pyarrow's end of writing; the upload itself is completed (or aborted) by the shard."""
        self.closed = True

    def writable(self) -> bool:
        return True


class StreamedShard:
    """A shard uploaded while it is written (a multipart upload), made visible only by ``commit``.

    Row groups go out in parts as they are written, so uploading overlaps embedding and memory
    holds a few parts at most. Nothing is visible at the final key until the upload is completed
    in ``commit``, after the fencing check; ``abort`` (or a kill) leaves no object.
    """

    PART_BYTES = 5 << 20  # the smallest part S3 accepts
    PARALLEL_PARTS = 2

    def __init__(self, store: ObjectStore, name: str, schema: pa.Schema, compression: str) -> None:
        obstore = obstore_module()
        self.store = store
        self.name = name
        self.rows = 0
        self.schema = schema
        try:
            self._upload = obstore.open_writer(
                store.client, name, buffer_size=self.PART_BYTES, max_concurrency=self.PARALLEL_PARTS
            )
        except STORE_ERRORS as exc:
            raise store._fail("upload", name, exc) from None
        self._sink = _HashingSink(self._upload)
        self._writer = parquet_writer(self._sink, schema, compression)

    def write(self, table: pa.Table) -> None:
        """Append ``table`` as one row group (its bytes stream out as parts fill)."""
        if table.num_rows:
            try:
                self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
            except STORE_ERRORS as exc:
                raise self.store._fail("upload", self.name, exc) from None
            self.rows += table.num_rows

    def commit(self) -> WrittenFile:
        """Write the footer, check the lease, complete the upload; return the manifest facts."""
        try:
            self._writer.close()
            self.store.fence()
            self._upload.close()  # completes the multipart upload: the shard appears whole
        except STORE_ERRORS as exc:
            self.abort()
            raise self.store._fail("upload", self.name, exc) from None
        except BaseException:
            self.abort()
            raise
        return WrittenFile(self.name, self.rows, self._sink.size, recorded(self._sink.hash))

    def abort(self) -> None:
        """Abort the upload: no object appears."""
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._upload.__exit__(RuntimeError, RuntimeError("shard abandoned"), None)


class MissingObject(OutputError, FileNotFoundError):
    """An object that is not in the bucket: a clear ``OutputError`` that is also a ``FileNotFoundError``."""


class ObjectStore(OutputStore):
    """An output prefix in S3, GCS or Azure Blob."""

    def __init__(self, where: Location, lease_seconds: float = 60.0) -> None:
        super().__init__(where)
        self.lease_seconds = lease_seconds
        self._store: Any = None
        self._manifest_version: dict[str, str] | None = None

    @property
    def client(self) -> Any:
        """The obstore store (connected on first use)."""
        if self._store is None:
            self._store = connect(self.where)
        return self._store

    def _fail(self, what: str, name: str, exc: BaseException) -> OutputError:
        if bucket_missing(exc):
            return OutputError(no_bucket(self.where))
        return OutputError(f"{self.describe(name)}: {what} failed: {message(exc)}")

    # ----------------------------------------------------------------------------- locking

    def acquire(self, shard: tuple[int, int] | None = None):
        """Take the lease (``OutputLocked`` naming the holder if a live run has it)."""
        self.lock = ObjectLease.acquire(self, lease_name(shard) + ".json", self.lease_seconds)
        return self.lock

    def gate(self):
        """The admission gate: a short create-only lease on ``_lease/admit.json``, waited for."""
        return gate(self, GATE + ".json", wait=max(60.0, 2 * self.lease_seconds))

    def live_writers(self) -> dict[tuple[int, int] | None, str]:
        """The writers' leases that are live now (expired ones are retired on the way)."""
        return live_writers(self, writer_of)

    def read_lock(self, name: str) -> tuple[dict | None, bool]:
        """The holder written in lease ``name`` (``_lease/job``; None if absent or unreadable); it expires."""
        import json

        got = self.get(name + ".json")
        try:
            return (json.loads(got[0]) if got else None), True
        except ValueError:
            return None, True

    # ----------------------------------------------------------------------------- writing

    def prepare(self) -> None:
        """Nothing to create: a prefix exists as soon as an object is under it."""

    def shard_writer(self, name: str, schema: pa.Schema, compression: str) -> StreamedShard:
        """A shard streamed to its final key and made visible on commit."""
        return StreamedShard(self, name, schema, compression)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Fencing check, then one PUT (whole or nothing)."""
        obstore = obstore_module()
        self.fence()
        try:
            obstore.put(self.client, name, data)
        except STORE_ERRORS as exc:
            raise self._fail("write", name, exc) from None

    def replace_manifest(self, data: bytes) -> None:
        """Fencing check, then a PUT conditional on the manifest's ETag (create-only the first time)."""
        obstore = obstore_module()
        self.fence()
        mode: Any = self._manifest_version or "create"
        failpoint("manifest-before-put")
        try:
            result = self._conditional_put(self.manifest_name, data, mode)
        except (obstore.exceptions.PreconditionError, obstore.exceptions.AlreadyExistsError):
            raise OutputError(
                f"{self.describe(self.manifest_name)} was replaced by another run since this run read it: this run "
                "no longer owns the output and stops without committing. "
                "Check which run is writing it (`batchembed status`)."
            ) from None
        except STORE_ERRORS as exc:
            raise self._fail("manifest write", self.manifest_name, exc) from None
        self._manifest_version = version_of(result)

    def _conditional_put(self, name: str, data: bytes, mode: Any) -> dict:
        """A conditional PUT, retried on S3's 409 ConditionalRequestConflict (two conditional writes raced)."""
        obstore = obstore_module()
        for attempt in range(4):
            try:
                return obstore.put(self.client, name, data, mode=mode, use_multipart=False)
            except (obstore.exceptions.PreconditionError, obstore.exceptions.AlreadyExistsError):
                raise
            except STORE_ERRORS as exc:
                if "409" not in str(exc) or attempt == 3:
                    raise
                time.sleep(0.2 * (attempt + 1))  # then the condition is evaluated again by the store
        raise AssertionError("unreachable")

    def abort_stale_uploads(self, owns: Any = None) -> list[str]:
        """The multipart uploads of this writer's shards that a killed writer left (``store.uploads``)."""
        return abort_stale_uploads(self, owns)

    def delete(self, name: str) -> None:
        """Fencing check, then DELETE (a prefix: every object under it)."""
        obstore = obstore_module()
        self.fence()
        try:
            keys = [name] + [m["path"] for m in obstore.list(self.client, name).collect()]
            for key in keys:
                with contextlib.suppress(*NOT_FOUND):
                    obstore.delete(self.client, key)
        except STORE_ERRORS as exc:
            raise self._fail("delete", name, exc) from None

    # ----------------------------------------------------------------------------- reading

    def manifest_stamp(self) -> tuple:
        """The manifest's ETag (and generation) from a HEAD, no body: ("absent",) when there is none. It is
        the version a conditional replace must match from now on (a changed one is read again)."""
        obstore = obstore_module()
        try:
            meta = obstore.head(self.client, self.manifest_name)
        except NOT_FOUND:
            self._manifest_version = None
            return ("absent",)
        except STORE_ERRORS as exc:
            raise self._fail("read", self.manifest_name, exc) from None
        self._manifest_version = version_of(meta)
        return tuple(sorted(self._manifest_version.items()))

    def read_manifest(self) -> bytes | None:
        """GET the manifest and remember its ETag for the conditional replace."""
        got = self.get(self.manifest_name)
        if got is None:
            self._manifest_version = None
            return None
        data, meta = got
        self._manifest_version = version_of(meta)
        return data

    def get(self, name: str) -> tuple[bytes, dict] | None:
        """Bytes and metadata (``e_tag``...), None if absent."""
        obstore = obstore_module()
        try:
            result = obstore.get(self.client, name)
            return bytes(result.bytes()), result.meta
        except NOT_FOUND:
            return None
        except STORE_ERRORS as exc:
            raise self._fail("read", name, exc) from None

    def list_names(self) -> list[str]:
        """Every object under the prefix (relative keys), the lease objects excluded."""
        obstore = obstore_module()
        try:
            names = [m["path"] for m in obstore.list(self.client).collect()]
        except STORE_ERRORS as exc:
            raise self._fail("list", "", exc) from None
        return sorted(n for n in names if not n.startswith(LEASE_DIR + "/"))

    def size(self, name: str) -> int | None:
        """HEAD: the object's size, None if absent."""
        obstore = obstore_module()
        try:
            return obstore.head(self.client, name)["size"]
        except NOT_FOUND:
            return None
        except STORE_ERRORS as exc:
            raise self._fail("head", name, exc) from None

    def open_read(self, name: str):
        """A random-access pyarrow file over ranged GETs."""
        loc = self.where.child(name)
        try:
            return loc.fs.open_input_file(loc.fs_path)
        except FileNotFoundError as exc:  # still a FileNotFoundError for callers that expect a file may be gone
            raise MissingObject(str(self._fail("open", name, exc))) from None
        except (OSError, pa.ArrowException) as exc:
            raise self._fail("open", name, exc) from None

    def read_bytes(self, name: str) -> bytes | None:
        """A small object's bytes, None if absent."""
        got = self.get(name)
        return None if got is None else got[0]
