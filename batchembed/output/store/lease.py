"""One writer per object-store output: a lease object, renewed by a heartbeat, checked before writes.

The lease is a small JSON object (``_lease/job.json``; one per ``--shard I/N`` slice,
``_lease/shard-0001-of-0004.json``, so that static slices can run side by side) saying who holds
it (host, pid, start) and until when. It is:

* taken with a create-only PUT (``If-None-Match: *``): of two runs starting together, one wins;
* renewed every third of its term by a PUT conditional on its ETag (``If-Match``);
* taken over, once expired (or, on the same host, once its pid is gone), by a PUT conditional on
  the ETag that was read, so two takers cannot both win;
* checked before every write of the output (fencing): a run paused past its term, whose lease
  another run has taken, stops instead of committing;
* deleted when the run ends.

Expiry compares wall clocks of different machines: keep them in sync (NTP), as every cloud requires.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from batchembed.errors import OutputError
from batchembed.fs.buckets import (
    NOT_FOUND,
    STORE_ERRORS,
    bucket_missing,
    message,
    no_bucket,
    obstore_module,
    version_of,
)
from batchembed.output.layout import LEASE_DIR
from batchembed.output.store.fencing import FenceToken
from batchembed.output.store.locks import LeaseLost, OutputLocked, WriterLock


class ObjectStore(Protocol):
    """What a lease asks of the bucket store that holds it (``store.objects.ObjectStore``)."""

    client: Any
    where: Any

    @property
    def uri(self) -> str: ...

    def describe(self, name: str) -> str: ...


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host: a zombie (killed, not yet reaped by its
    parent) still answers ``kill(pid, 0)`` but will never renew a lease again, so it counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``/proc/PID/stat`` says state ``Z`` (Linux; elsewhere, or unreadable: False)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses, so the state follows the last ")"
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


def describe_holder(doc: dict[str, Any]) -> str:
    """ "pid 42 on host h1, started ..., lease valid until ..." for messages."""
    try:
        return (
            f"pid {doc['pid']} on host {doc['host']}, started {_when(doc['started'])}, "
            f"lease valid until {_when(doc['until'])}"
        )
    except (KeyError, TypeError, ValueError):
        return "an unreadable lease"


class ObjectLease(WriterLock):
    """A held lease; a daemon thread renews it until ``release``."""

    def __init__(self, store: ObjectStore, key: str, seconds: float, doc: dict[str, Any], version: dict) -> None:
        self.store = store
        self.key = key
        self.seconds = seconds
        self.doc = doc
        self.version = version  # what the next renewal must match
        self.etag = version["e_tag"]
        self.until = doc["until"]
        self.lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="batchembed-lease", daemon=True)
        self._thread.start()
        _remove_old_probes(store)

    # ------------------------------------------------------------------------------ taking

    @classmethod
    def acquire(cls, store: ObjectStore, key: str, seconds: float, probe: bool = True) -> ObjectLease:
        """Create the lease, or take over an expired one; ``OutputLocked`` if a live run holds it.

        ``probe``: first check that the store honours create-only PUTs (once per run is enough)."""
        obstore = obstore_module()
        if probe:
            _check_conditional_writes(store)
        now = time.time()
        doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run": uuid.uuid4().hex,
            "started": now,
            "until": now + seconds,
            "lease_seconds": seconds,
        }
        for _ in range(5):
            doc["until"] = time.time() + seconds
            try:
                result = obstore.put(store.client, key, json.dumps(doc).encode(), mode="create", use_multipart=False)
                return cls(store, key, seconds, doc, version_of(result))
            except obstore.exceptions.AlreadyExistsError:
                pass
            except STORE_ERRORS as exc:
                raise OutputError(f"{store.describe(key)}: cannot create the lease: {message(exc)}") from None
            got = store.get(key)
            if got is None:
                continue  # released meanwhile: try to create it again
            data, meta = got
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            if not lease_expired(holder):
                raise OutputLocked(_refusal(store, holder))
            doc["until"] = time.time() + seconds
            try:
                result = obstore.put(
                    store.client, key, json.dumps(doc).encode(), mode=version_of(meta), use_multipart=False
                )
                return cls(store, key, seconds, doc, version_of(result))
            except (obstore.exceptions.PreconditionError, obstore.exceptions.AlreadyExistsError):
                continue  # another run took it over first: read who, and refuse (or retry if it is gone)
            except STORE_ERRORS as exc:
                if "409" in str(exc):  # S3 ConditionalRequestConflict: a concurrent conditional write
                    continue
                raise OutputError(f"{store.describe(key)}: cannot take over the lease: {message(exc)}") from None
        raise OutputLocked(f"{store.uri}: other runs keep taking the lease on this output; is a scheduler looping?")

    # --------------------------------------------------------------------------- holding

    def _heartbeat(self) -> None:
        obstore = obstore_module()
        while not self._stop.wait(self.seconds / 3):
            with self._mutex:
                if self.lost:
                    return
                doc = {**self.doc, "until": time.time() + self.seconds}
                try:
                    result = obstore.put(
                        self.store.client,
                        self.key,
                        json.dumps(doc).encode(),
                        mode=self.version,
                        use_multipart=False,
                    )
                except (obstore.exceptions.PreconditionError, *NOT_FOUND):
                    self.lost = "another run took the lease over (this run was paused or cut off past its term)"
                    return
                except STORE_ERRORS:
                    if time.time() >= self.until:
                        self.lost = "the lease could not be renewed before it expired"
                        return
                    continue  # a transient failure: the next beat retries
                self.doc, self.version, self.until = doc, version_of(result), doc["until"]
                self.etag = self.version["e_tag"]

    def check(self) -> None:
        """Fencing: raise ``LeaseLost`` unless the lease object is still the one this run last wrote."""
        obstore = obstore_module()
        with self._mutex:
            if not self.lost and time.time() >= self.until:
                self.lost = "the lease expired before it could be renewed"
            if not self.lost:
                try:
                    current = obstore.head(self.store.client, self.key)["e_tag"]
                except NOT_FOUND:
                    current = None
                except STORE_ERRORS as exc:
                    raise OutputError(
                        f"{self.store.describe(self.key)}: cannot check the lease: {message(exc)}"
                    ) from None
                if current != self.etag:
                    self.lost = "another run took the lease over (this run was paused or cut off past its term)"
                elif time.time() >= self.until:  # the check itself took long (a slow or partitioned store)
                    self.lost = "the lease expired before it could be renewed"
            if self.lost:
                raise LeaseLost(
                    f"{self.store.uri}: this run no longer holds the output's lease: {self.lost}. "
                    "It stops without writing; the run holding the lease now carries the job on."
                )

    def token(self) -> FenceToken:
        """This holding: the lease's name and the run id written in it (kept through renewals)."""
        return FenceToken(self.key.removesuffix(".json"), self.doc["run"])

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        self._thread.join(timeout=5)
        obstore = obstore_module()
        with self._mutex:
            if self.lost:
                return
            self.lost = "released"
            try:
                if obstore.head(self.store.client, self.key)["e_tag"] == self.etag:
                    obstore.delete(self.store.client, self.key)
            except STORE_ERRORS:
                pass  # it expires on its own


# ------------------------------------------------------------------------------------ admission

#: Term of the admission gate's lease (a writer holds the gate for a few requests).
GATE_SECONDS = 30.0


@contextlib.contextmanager
def gate(store: ObjectStore, key: str, wait: float) -> Iterator[ObjectLease]:
    """Hold the output's admission gate (a lease on ``key``), waiting up to ``wait`` s for another writer's."""
    _check_conditional_writes(store)
    deadline = time.monotonic() + wait
    while True:
        try:
            held = ObjectLease.acquire(store, key, GATE_SECONDS, probe=False)
            break
        except OutputLocked:
            if time.monotonic() > deadline:
                raise OutputLocked(
                    f"{store.uri}: another run has been starting on this output for {wait:.0f} s; "
                    "run again once it is running or gone."
                ) from None
            time.sleep(0.1)
    try:
        yield held
    finally:
        held.release()


def live_writers(store: ObjectStore, is_writer) -> dict[Any, str]:
    """Writers' leases under ``_lease/`` that are live now: {part: holder}; ``is_writer(name)`` parses a
    lease name to (is a writer's lease, part). An expired one is retired (replaced, conditionally on the
    ETag read, by an expired marker), so that its holder, paused past its term, can neither renew it nor
    pass its fencing check again."""
    obstore = obstore_module()
    live: dict[Any, str] = {}
    try:
        keys = [m["path"] for m in obstore.list(store.client, f"{LEASE_DIR}/").collect()]
    except STORE_ERRORS as exc:
        raise OutputError(f"{store.uri}: cannot list the leases: {message(exc)}") from None
    for key in sorted(keys):
        writer, part = is_writer(key.removesuffix(".json"))
        if not writer or not key.endswith(".json"):
            continue
        got = store.get(key)
        if got is None:
            continue
        data, meta = got
        try:
            holder = json.loads(data)
        except ValueError:
            holder = {}
        if not lease_expired(holder):
            live[part] = describe_holder(holder)
            continue
        retired = json.dumps({"retired": True, "until": 0, "by_pid": os.getpid(), "at": time.time()}).encode()
        try:
            obstore.put(store.client, key, retired, mode=version_of(meta), use_multipart=False)
        except (obstore.exceptions.PreconditionError, *NOT_FOUND):
            if (again := store.get(key)) is not None:  # renewed or retaken meanwhile: live after all
                try:
                    holder = json.loads(again[0])
                except ValueError:
                    holder = {}
                if not lease_expired(holder):
                    live[part] = describe_holder(holder)
        except STORE_ERRORS as exc:
            if "409" not in str(exc):
                raise OutputError(f"{store.describe(key)}: cannot retire an expired lease: {message(exc)}") from None
            live[part] = describe_holder(holder)  # a concurrent conditional write: count it live, be safe
    return live


def lease_expired(holder: dict[str, Any]) -> bool:
    """A lease is free once its term has passed, or at once when its holder is a dead pid on this host."""
    try:
        if time.time() >= float(holder["until"]):
            return True
        return holder["host"] == socket.gethostname() and not _pid_alive(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: treat as free (the take-over is still conditional on its ETag)


def _refusal(store: ObjectStore, holder: dict[str, Any]) -> str:
    try:
        renews = f"every {float(holder['lease_seconds']) / 3:.0f} s"
    except (KeyError, TypeError, ValueError):
        renews = "regularly"
    return (
        f"{store.uri} is being written by another run ({describe_holder(holder)}). Only one run may write an output "
        f"at a time. That run renews its lease {renews} while alive; if it was killed, the lease expires at the "
        "time above and the next run takes over. Run again after that, or stop the other run."
    )


def _check_conditional_writes(store: ObjectStore) -> None:
    """Refuse a store that ignores create-only PUTs: it could not keep two runs apart."""
    obstore = obstore_module()
    probe = f"{LEASE_DIR}/probe-{uuid.uuid4().hex}"
    try:
        obstore.put(store.client, probe, b"1", mode="create", use_multipart=False)
        try:
            obstore.put(store.client, probe, b"2", mode="create", use_multipart=False)
        except obstore.exceptions.AlreadyExistsError:
            return
        except STORE_ERRORS as exc:
            if "412" in str(exc) or "409" in str(exc):
                return
            raise
        raise OutputError(
            f"{store.uri}: this store ignores conditional writes (If-None-Match), so batchembed cannot keep two runs "
            "from writing the output at once, nor protect its manifest. Use a store that supports them (S3, GCS, "
            "Azure, recent MinIO/R2/Ceph) or write to a local disk."
        )
    except STORE_ERRORS as exc:
        if bucket_missing(exc):
            raise OutputError(no_bucket(store.where)) from None
        raise OutputError(f"{store.uri}: cannot write to the output: {message(exc)}") from None
    finally:
        with contextlib.suppress(*STORE_ERRORS):
            obstore.delete(store.client, probe)


def _remove_old_probes(store: ObjectStore) -> None:
    """Delete probe objects a killed run left behind (older than a minute: never one in use)."""
    obstore = obstore_module()
    try:
        for meta in obstore.list(store.client, f"{LEASE_DIR}/").collect():
            old = time.time() - meta["last_modified"].timestamp() > 60
            if meta["path"].startswith(f"{LEASE_DIR}/probe-") and old:
                obstore.delete(store.client, meta["path"])
    except STORE_ERRORS:
        pass  # best effort: a probe left over is harmless and tiny
