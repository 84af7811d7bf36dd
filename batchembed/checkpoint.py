"""The manifest: which work units are committed, under which job fingerprint. Exactly-once lives here.

A *work unit* is a contiguous range of rows of one input file (``shard_rows`` long, the last one
shorter); each becomes exactly one shard. A unit counts as done only when its shard is fully
written, fsynced, renamed into place *and* recorded here. The manifest itself is replaced
atomically (temp file, fsync, rename, fsync of the directory), so after a crash it is either the
old or the new version, never half of one. Anything in the directory the manifest does not
account for (temp files, a shard renamed just before the crash) is removed on the next start.

Rows that could not be embedded are kept per shard in ``_failed/<shard>.parquet``; a later retry
commits their vectors as a new shard *and* marks those failure files resolved in the same manifest
write, so no row is ever in the output twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.errors import OutputError, ResumeRefused
from batchembed.writer import TMP_SUFFIX, fsync_dir, sha256_of

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
REPORT = "_report.json"
FAILED = "_failed.parquet"
FAILED_DIR = "_failed"
TRUNCATED = "_truncated.parquet"
TRUNCATED_DIR = "_truncated"
FORMAT_VERSION = 1


@dataclass
class ShardRecord:
    """One committed shard."""

    name: str
    kind: str  # "range": rows start..end of one file; "retry": previously failed rows
    file: str | None  # input file name (range shards)
    start: int  # first input row (range shards)
    end: int  # one past the last input row (range shards)
    eof: bool  # this range reached the end of its file
    rows: int  # rows in the shard
    failed: int  # rows of this unit that went to the failure file
    failed_file: str | None
    size: int
    sha256: str
    tokens: int
    resolves: list[str] = field(default_factory=list)  # failure files this retry shard answers
    truncated: int = 0  # rows of this shard whose text was cut (listed in _truncated/<shard>)


@dataclass
class Manifest:
    """Everything a resume needs to know."""

    fingerprint: dict[str, Any]
    shards: list[ShardRecord] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # failure files answered by retry shards
    complete: bool = False
    version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    server: dict[str, Any] = field(default_factory=dict)  # served model and canary vector (servers.py)

    # --------------------------------------------------------------------------------- queries

    def ranges_of(self, file: str) -> list[ShardRecord]:
        """Committed range shards of one input file, in row order."""
        return sorted((s for s in self.shards if s.kind == "range" and s.file == file), key=lambda s: s.start)

    def unresolved_failures(self) -> list[str]:
        """Failure files whose rows have not been retried successfully yet."""
        done = set(self.resolved)
        return [s.failed_file for s in self.shards if s.failed_file and s.failed_file not in done]

    def unresolved_rows(self, directory: Path) -> int:
        """Rows in failure files not yet answered by a retry shard (what ``_failed.parquet`` holds)."""
        return sum(pq.ParquetFile(directory / f).metadata.num_rows for f in self.unresolved_failures())

    def truncated(self) -> int:
        """Committed rows whose text was cut before embedding."""
        return sum(s.truncated for s in self.shards)

    def tokens(self) -> int:
        """Tokens spent on everything committed."""
        return sum(s.tokens for s in self.shards)

    def rows(self) -> int:
        """Rows in committed shards."""
        return sum(s.rows for s in self.shards)

    # ---------------------------------------------------------------------------------- storage

    def save(self, directory: Path) -> None:
        """Atomically replace ``directory/_manifest.json`` with this manifest."""
        doc = {
            "version": self.version,
            "created": self.created,
            "complete": self.complete,
            "fingerprint": self.fingerprint,
            "fingerprint_sha256": fingerprint_hash(self.fingerprint),
            "resolved": self.resolved,
            "shards": [asdict(s) for s in self.shards],
            "server": self.server,
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        tmp = directory / (MANIFEST + TMP_SUFFIX)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        failpoint("manifest-before-rename")
        os.replace(tmp, directory / MANIFEST)
        fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path) -> Manifest | None:
        """The manifest in ``directory``, None if there is none; OutputError if it cannot be trusted."""
        path = directory / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {doc.get('version')!r}, expected {FORMAT_VERSION}")
            if doc["fingerprint_sha256"] != fingerprint_hash(doc["fingerprint"]):
                raise ValueError("its fingerprint does not match its own checksum")
            shards = [ShardRecord(**s) for s in doc["shards"]]
            return cls(
                fingerprint=doc["fingerprint"],
                shards=shards,
                resolved=list(doc["resolved"]),
                complete=bool(doc["complete"]),
                version=doc["version"],
                created=doc["created"],
                server=dict(doc.get("server") or {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(
                f"{path} is corrupt ({exc}); it cannot be trusted to resume. "
                "Run again with --restart to discard this output and start over."
            ) from None


def failpoint(name: str) -> None:
    """Crash-test hook: SIGKILL this process at ``name`` when BATCHEMBED_FAILPOINT says so.

    Lets the resume tests kill a real process at an exact step of the commit protocol (for
    instance between writing the new manifest and renaming it into place).
    """
    if os.environ.get("BATCHEMBED_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Stable sha256 of a fingerprint dict."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints ("model.name: 'a' -> 'b'")."""
    changes = []
    old_files = {f["name"]: f for f in old.get("files", [])}
    new_files = {f["name"]: f for f in new.get("files", [])}
    for name in sorted(set(old_files) | set(new_files)):
        a, b = old_files.get(name), new_files.get(name)
        if a is None:
            changes.append(f"input file {name} was added")
        elif b is None:
            changes.append(f"input file {name} was removed")
        elif a != b:
            what = [k for k in ("size", "mtime_ns") if a.get(k) != b.get(k)]
            changes.append(f"input file {name} changed ({', '.join(what)})")
    for key in sorted(set(old) | set(new)):
        if key == "files":
            continue
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def open_output(directory: Path, fingerprint: dict[str, Any], restart: bool) -> Manifest:
    """Prepare ``directory`` for a run and return its manifest (new or resumed).

    Refuses (``ResumeRefused``) when it holds another job's output, unless ``restart``; removes
    temp files and any shard the manifest does not record; checks that every recorded shard is
    still there with the recorded size and a readable footer.
    """
    if restart and directory.exists():
        remove_output(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(directory)
    if manifest is None:
        stray = [p.name for p in directory.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet"]
        if stray:
            raise ResumeRefused(
                f"{directory} holds shards ({stray[0]}, ...) but no {MANIFEST}: it is not a batchembed output "
                "this job can resume. Use another output.path, or --restart to delete them."
            )
        manifest = Manifest(fingerprint=fingerprint)
        manifest.save(directory)
        return manifest
    if fingerprint_hash(manifest.fingerprint) != fingerprint_hash(fingerprint) and not manifest.shards:
        # Nothing committed binds this output yet (a run that failed before its first shard, e.g. on a
        # typo in model.name): the corrected job simply takes it over.
        remove_orphans(directory, manifest)
        manifest = Manifest(fingerprint=fingerprint)
        manifest.save(directory)
        return manifest
    if fingerprint_hash(manifest.fingerprint) != fingerprint_hash(fingerprint):
        changes = describe_changes(manifest.fingerprint, fingerprint)
        raise ResumeRefused(
            f"{directory} holds output of a different job: "
            + "; ".join(changes or ["fingerprint differs"])
            + ". Resuming would mix vectors of two jobs. Run with --restart to discard the old output."
        )
    remove_orphans(directory, manifest)
    check_shards(directory, manifest)
    return manifest


def remove_output(directory: Path) -> None:
    """Delete everything batchembed writes in ``directory`` (used by --restart)."""
    if not directory.exists():
        return
    for p in directory.iterdir():
        if p.name.startswith(("part-", "_")):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def remove_orphans(directory: Path, manifest: Manifest) -> None:
    """Delete temp files and shards/failure files that the manifest does not record."""
    known = {s.name for s in manifest.shards} | {s.failed_file for s in manifest.shards if s.failed_file}
    known |= {f"{TRUNCATED_DIR}/{s.name}" for s in manifest.shards if s.truncated}
    extra = list((directory / FAILED_DIR).glob("*")) + list((directory / TRUNCATED_DIR).glob("*"))
    for p in list(directory.iterdir()) + extra:
        rel = str(p.relative_to(directory))
        if p.name.endswith(TMP_SUFFIX) or (p.name.startswith("part-") and rel not in known):
            p.unlink(missing_ok=True)
    if not manifest.complete:
        (directory / SUCCESS).unlink(missing_ok=True)


def check_shards(directory: Path, manifest: Manifest) -> None:
    """Every recorded file exists with its recorded size and a readable Parquet footer."""
    for s in manifest.shards:
        check_file(directory / s.name, s.size, None)  # hashing every shard is `verify`'s job
        if s.failed_file:
            check_file(directory / s.failed_file, None, None)


def check_file(path: Path, size: int | None, digest: str | None) -> None:
    """Raise OutputError unless ``path`` exists, has ``size`` bytes, a Parquet footer and ``digest``."""
    hint = "Run with --restart to start over."
    if not path.exists():
        raise OutputError(f"{path} is recorded in {MANIFEST} but missing. {hint}")
    if size is not None and path.stat().st_size != size:
        raise OutputError(f"{path} has {path.stat().st_size} bytes, {MANIFEST} recorded {size}: truncated? {hint}")
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"{path} is not a readable Parquet file ({exc}). {hint}") from None
    if digest is not None and sha256_of(path) != digest:
        raise OutputError(f"{path} does not match the checksum in {MANIFEST}. {hint}")
