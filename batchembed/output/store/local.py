"""The output store on a local disk: temp file, fsync, rename; one writer by ``fcntl.flock``.

A shard or the manifest is written to ``NAME.tmp``, fsynced and renamed over ``NAME``, then the
directory is fsynced: after a crash a file is either its old or its new version. The lock is an
``flock`` on ``_lease/job.lock``: the kernel drops it when the holder exits or is killed, so a
``kill -9`` never blocks the next run; the file holds who took it (host, pid, start) for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.failpoints import failpoint
from batchembed.fs.atomic import fsync_dir, write_atomic
from batchembed.fs.location import Location
from batchembed.output.layout import GATE, LEASE_DIR, lease_name, writer_of
from batchembed.output.shard_writer import ShardWriter
from batchembed.output.store.base import OutputStore
from batchembed.output.store.fencing import FenceToken
from batchembed.output.store.locks import OutputLocked, WriterLock


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class FlockLock(WriterLock):
    """An exclusive ``flock`` held for the life of the process (or until ``release``)."""

    def __init__(self, path: Path, display: str) -> None:
        self.path = path
        self.name = f"{LEASE_DIR}/{path.name.removesuffix('.lock')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"{display} is being written by another run ({holder}); "
                "only one run may write an output at a time. The lock is released the moment that process "
                "exits (even if killed): wait for it, or stop it, then run again."
            ) from None
        self.fd: int | None = fd
        #: ``run`` identifies this holding of the lock: the fencing token a Ray driver hands its workers.
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "run": uuid.uuid4().hex}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)

    def check(self) -> None:
        """An flock cannot be taken away from a live process: always held."""

    def token(self) -> FenceToken:
        """This holding: the lock's name and the run id written in it."""
        return FenceToken(self.name, self.info["run"])

    def release(self) -> None:
        """Unlock (the file stays: deleting it would race with a run that just opened it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


#: Seconds a writer waits for another one to be admitted before it gives up.
GATE_WAIT = 60.0


class _HeldGate(WriterLock):
    """The local gate: an ``flock`` cannot be taken from a live process, so it is always still ours."""

    def check(self) -> None:
        return None

    def release(self) -> None:
        return None


def read_holder(fd: int) -> str:
    """Who holds a local lock, from the holder line written in its file (for messages)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']}, started {_when(info['started'])}, holding it while it runs"
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that is just starting"


class LocalStore(OutputStore):
    """An output directory on this machine."""

    def __init__(self, where: Location) -> None:
        super().__init__(where)
        self.directory = Path(where.key)

    def acquire(self, shard: tuple[int, int] | None = None) -> FlockLock:
        """Take the flock on ``_lease/job.lock`` (``OutputLocked`` naming the holder if it is taken)."""
        self.lock = FlockLock(self.directory / (lease_name(shard) + ".lock"), str(self.directory))
        return self.lock

    @contextlib.contextmanager
    def gate(self) -> Iterator[WriterLock]:
        """An ``flock`` on ``_lease/admit.lock``, waited for (a writer holds it for milliseconds)."""
        path = self.directory / (GATE + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + GATE_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OutputLocked(
                            f"{self.directory}: another run has been starting on this output for "
                            f"{GATE_WAIT:.0f} s (is it stopped?); run again once it is running or gone."
                        ) from None
                    time.sleep(0.02)
            yield _HeldGate()
        finally:
            os.close(fd)  # unlocks

    def live_writers(self) -> dict[tuple[int, int] | None, str]:
        """Lock files under ``_lease/`` whose ``flock`` a live process holds (tried without waiting)."""
        live: dict[tuple[int, int] | None, str] = {}
        for path in sorted((self.directory / LEASE_DIR).glob("*.lock")):
            is_writer, part = writer_of(f"{LEASE_DIR}/{path.name.removesuffix('.lock')}")
            if not is_writer:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live[part] = read_holder(fd)
            finally:
                os.close(fd)
        return live

    def read_lock(self, name: str) -> tuple[dict | None, bool]:
        """The holder a lock file names (``name``: ``_lease/job``; None if unreadable); it never expires."""
        try:
            return json.loads((self.directory / (name + ".lock")).read_bytes() or b"null"), False
        except (OSError, ValueError):
            return None, False

    def prepare(self) -> None:
        """Create the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def shard_writer(self, name: str, schema: pa.Schema, compression: str) -> ShardWriter:
        """Today's writer: a temp file renamed into place on commit (after the fencing check)."""
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return ShardWriter(path.parent, path.name, schema, compression, before_publish=self.fence)

    def write_bytes(self, name: str, data: bytes, before_rename: str | None = None) -> None:
        """Fencing check, then ``atomic.write_atomic``: temp file, fsync, (the ``before_rename`` failpoint),
        rename, fsync the directory."""
        self.fence()
        hook = (lambda: failpoint(before_rename)) if before_rename else None
        write_atomic(self.directory / name, data, before_replace=hook)

    def replace_manifest(self, data: bytes) -> None:
        """The manifest written like any small file; a crash test can stop it just before the rename."""
        self.write_bytes(self.manifest_name, data, before_rename="manifest-before-rename")

    def append_commit(self, line: bytes) -> bool:
        """One write + fsync on ``_commits.jsonl``: committing stays O(1) however many shards there are."""
        path = self.directory / self.journal_name
        new = not path.exists()
        with open(path, "ab") as fh:
            if os.environ.get("BATCHEMBED_FAILPOINT") == "journal-torn":
                fh.write(line[: len(line) // 2])
                fh.flush()
                failpoint("journal-torn")
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.directory)
        return True

    def read_commits(self) -> bytes | None:
        """The journal's bytes, None if absent."""
        return self.read_bytes(self.journal_name)

    def drop_commits(self) -> None:
        """Unlink the journal (its lines are in the manifest now)."""
        (self.directory / self.journal_name).unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        """Unlink (a directory is removed with what is in it)."""
        path = self.directory / name
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            path.rmdir()
        else:
            path.unlink(missing_ok=True)

    def manifest_stamp(self) -> tuple:
        """The manifest's and the commit journal's inode, size and modification time (absent: None): a
        replace (a rename) or an appended commit changes it."""
        stamp = []
        for name in (self.manifest_name, self.journal_name):
            try:
                st = os.stat(self.directory / name)
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stamp.append(None)
        return tuple(stamp)

    def read_manifest(self) -> bytes | None:
        """The manifest's bytes, None if absent."""
        try:
            return (self.directory / self.manifest_name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"{self.directory / self.manifest_name}: cannot read: {exc}") from None

    def list_names(self) -> list[str]:
        """Files under the directory, relative, the lease directory excluded."""
        if not self.directory.is_dir():
            return []
        names = []
        for p in self.directory.rglob("*"):
            rel = p.relative_to(self.directory).as_posix()
            if (p.is_file() or p.is_symlink()) and not rel.startswith(LEASE_DIR + "/"):
                names.append(rel)
        return sorted(names)

    def size(self, name: str) -> int | None:
        """st_size, None if absent."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return (self.directory / name).stat().st_size
        return None

    def open_read(self, name: str) -> str:
        """The local path itself."""
        return str(self.directory / name)

    def read_bytes(self, name: str) -> bytes | None:
        """Bytes, None if absent."""
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None
