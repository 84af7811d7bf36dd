"""The manifest: which work units are committed, under which job fingerprint. Exactly-once lives here.

A *work unit* is a contiguous range of rows of one input file (``shard_rows`` long, the last one
shorter); each becomes exactly one shard. A unit counts as done only when its shard is fully
written, fsynced, renamed into place *and* recorded here. The manifest itself is replaced
atomically (temp file, fsync, rename, fsync of the directory), so after a crash it is either the
old or the new version, never half of one. Anything in the directory the manifest does not
account for (temp files, a shard renamed just before the crash) is removed on the next start.

Committing a shard does not rewrite the manifest where the store can append (a local disk): it
appends one line to ``_commits.jsonl`` (write, fsync), so committing stays O(1) per shard however many
shards there are. ``Manifest.load`` replays the lines over ``_manifest.json`` (a torn last line, from a
crash mid-append, is ignored: its shard was not committed and is removed as an orphan); each run start
and the final save fold the lines back into ``_manifest.json`` and drop the journal.

Where the files live is an :class:`~batchembed.output.store.base.OutputStore`: on a local disk the
manifest is replaced by rename; on an object store (no rename, no append) by a PUT conditional on
its ETag, at every commit.

Rows that could not be embedded are kept per shard in ``_failed/<shard>.parquet``; a later retry
commits their vectors as a new shard *and* marks those failure files resolved in the same manifest
write, so no row is ever in the output twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from batchembed.errors import OutputError, ResumeRefused
from batchembed.job.fingerprint import fingerprint_hash, reshaped
from batchembed.output.layout import (
    MANIFEST,
    TRUNCATED_DIR,
)

if TYPE_CHECKING:
    from batchembed.output.store.base import OutputStore

#: 2: the fingerprint holds the job's settings only; every shard records the input files it holds
#: (``inputs``: name -> identity) and its stable ``unit`` name; refresh generations; a Delta table.
FORMAT_VERSION = 2
OLD_VERSIONS = (1,)


class MissingFile(OutputError):
    """A file the manifest records is not in the output."""


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
    checksum: str  # ``output.checksum``: ``<algorithm>:<hex>`` (a bare sha256 hex in older outputs)
    tokens: int
    resolves: list[str] = field(default_factory=list)  # failure files this retry shard answers
    files: list[list] = field(default_factory=list)  # "files" shards: [[input file, rows], ...] held whole
    truncated: int = 0  # rows of this shard whose text was cut (listed in _truncated/<shard>)
    unit: str = ""  # the stable unit name (``part-00007``): journal and ownership; ``name`` is the file
    inputs: dict[str, dict] = field(default_factory=dict)  # input file name -> its identity when read
    #: CSV/JSON Lines files whose last rows this shard holds -> where each ended (``file_ends``: rows, bytes,
    #: digests), so a file that only grew is read from there and a touched one is proven unchanged. Absent
    #: from outputs written before (their files are read again whole when they change).
    ends: dict[str, dict] = field(default_factory=dict)
    #: tokens that bought the vectors this shard took from earlier shards (a refresh reuses them): with
    #: ``tokens`` (what its own runs paid), what the shard's rows cost (``figures.current_tokens``)
    reused_tokens: int = 0
    #: its distinct texts with a vector as the job's tokenizer counts them: what turns a reused text's count
    #: into the tokens the server billed for it (``output.cache.OutputCache.ratio``)
    counted: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ShardRecord:
        """A record as the manifest or the commit journal holds it (older outputs: ``sha256``, a bare hex)."""
        if "sha256" in doc:
            doc = {**doc, "checksum": doc["sha256"]}
            del doc["sha256"]
        return cls(**doc)

    @property
    def unit_name(self) -> str:
        """The unit this shard commits (its stable name, whatever attempt wrote the file)."""
        return self.unit or self.name.removesuffix(".parquet")

    def owned_files(self) -> list[str]:
        """Every output file that belongs to this shard: the shard, its failed rows and its cut rows."""
        out = [self.name]
        if self.failed_file:
            out.append(self.failed_file)
        if self.truncated:
            out.append(f"{TRUNCATED_DIR}/{self.name}")
        return out


@dataclass
class Manifest:
    """Everything a resume needs to know."""

    fingerprint: dict[str, Any]
    shards: list[ShardRecord] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # failure files answered by retry shards
    complete: bool = False
    version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    #: The run that last saved it: a run that takes an output over re-saves it, which changes its
    #: ETag, so a paused previous writer's conditional replace fails.
    writer: str = field(default_factory=lambda: os.urandom(8).hex())
    server: dict[str, Any] = field(default_factory=dict)  # served model and canary vector (servers.py)
    #: Refresh generation: 0 for the first run; +1 whenever a run finds inputs changed (``output.input_diff``).
    generation: int = 0
    #: The files (name -> identity) the current generation was planned over: a resume of an
    #: interrupted refresh over the same inputs continues it; other inputs start a new generation.
    work: dict[str, dict] = field(default_factory=dict)
    #: Shards replaced or dropped by the current generation, still in the published table until
    #: the next publish (their files stay until then).
    retiring: list[ShardRecord] = field(default_factory=list)
    #: Files removed from the table but kept for ``output.history_days``: [[name, removed at (s)]].
    retired: list[list] = field(default_factory=list)
    #: The last publish tag written to the Delta table (0: never published).
    published: int = 0
    #: The last version of the Delta log batchembed accounted for (its own publish, or others' maintenance
    #: it took in): {"version", "digest" of that commit file, "tag" of batchembed's last publish}.
    table: dict[str, Any] = field(default_factory=dict)
    #: Files others wrote from our shards without changing a row (a compaction), taken into the table:
    #: [{"files": {name: {"size", "rows"}}, "covers": [shard file names]}] (``publish/state.Group``).
    adopted: list[dict] = field(default_factory=list)
    #: The current generation only rewrites shards from the vectors the output holds (a kept column
    #: changed, no input did): nothing is bought, so no request is needed, not even the canary.
    rewrite_only: bool = False
    #: The fingerprint of the job running now (not saved): it may differ from ``fingerprint`` only in
    #: settings that do not make another job (``fingerprint.RESHAPING``), which the next generation applies.
    wanted: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    #: The current generation's figures (``figures``): the files by state, recorded when it starts (so a
    #: resumed run says them too); rows added/updated/removed by id, once it is complete.
    refresh: dict[str, Any] = field(default_factory=dict)

    # --------------------------------------------------------------------------------- queries

    def ranges_of(self, file: str) -> list[ShardRecord]:
        """Committed row ranges of one input file, in row order.

        A "files" shard (several whole small files) appears here as one range 0..rows of each of its
        files, under the shard's name, so tiling, resume and progress treat both kinds alike.
        """
        found = [s for s in self.shards if s.kind == "range" and s.file == file]
        for s in self.shards:
            if s.kind == "files":
                found += [
                    dataclasses.replace(s, file=file, start=0, end=int(rows), eof=True, rows=int(rows), files=[])
                    for name, rows in s.files
                    if name == file
                ]
        return sorted(found, key=lambda s: s.start)

    def reshaping(self) -> list[str]:
        """The settings (``input.keep``) whose change makes this run rewrite every shard; [] for none."""
        return reshaped(self.fingerprint, self.wanted) if self.wanted is not None else []

    def unresolved_failures(self) -> list[str]:
        """Failure files whose rows have not been retried successfully yet."""
        done = set(self.resolved)
        return [s.failed_file for s in self.shards if s.failed_file and s.failed_file not in done]

    def unresolved_rows(self, store: OutputStore) -> int:
        """Rows in failure files not yet answered by a retry shard (what ``_failed.parquet`` holds)."""
        return sum(store.parquet_file(f).metadata.num_rows for f in self.unresolved_failures())

    def truncated(self) -> int:
        """Committed rows whose text was cut before embedding."""
        return sum(s.truncated for s in self.shards)

    def tokens(self) -> int:
        """Tokens the committed shards' rows cost: paid by the runs that wrote them, plus the tokens carried
        with vectors they reused from shards a refresh replaced."""
        return sum(s.tokens + s.reused_tokens for s in self.shards)

    def rows(self) -> int:
        """Rows in committed shards."""
        return sum(s.rows for s in self.shards)

    # ---------------------------------------------------------------------------------- storage

    def commit(self, store: OutputStore, record: ShardRecord, resolves: list[str]) -> None:
        """Record a committed shard (and the failure files it resolves).

        Where the store can append durably (a local disk) this is one fsynced journal line, O(1) per
        shard; elsewhere (object stores: no appends) the manifest is replaced, conditionally."""
        line = json.dumps({"shard": asdict(record), "resolves": list(resolves)}, sort_keys=True) + "\n"
        appended = store.append_commit(line.encode())
        self.shards.append(record)
        self.resolved.extend(resolves)
        if not appended:
            self.save(store)

    def _replay(self, store: OutputStore) -> bool:
        """Apply the commit journal's complete lines (skipping what the manifest holds); True if any."""
        raw = store.read_commits()
        if raw is None:
            return False
        known = {s.name for s in self.shards}
        for line in raw.split(b"\n")[:-1]:  # the part after the last newline is torn (or empty)
            entry = json.loads(line)
            record = ShardRecord.from_doc(entry["shard"])
            if record.name in known:
                continue
            known.add(record.name)
            self.shards.append(record)
            self.resolved.extend(r for r in entry["resolves"] if r not in self.resolved)
        return True

    def save(self, store: OutputStore) -> None:
        """Atomically replace the output's ``_manifest.json`` with this manifest (folding in the journal)."""
        doc = {
            "version": self.version,
            "created": self.created,
            "complete": self.complete,
            "fingerprint": self.fingerprint,
            "fingerprint_sha256": fingerprint_hash(self.fingerprint),
            "resolved": self.resolved,
            "shards": [asdict(s) for s in self.shards],
            "writer": self.writer,
            "server": self.server,
            "generation": self.generation,
            "work": self.work,
            "retiring": [asdict(s) for s in self.retiring],
            "retired": self.retired,
            "published": self.published,
            "table": self.table,
            "adopted": self.adopted,
            **({"rewrite_only": True} if self.rewrite_only else {}),
            "refresh": self.refresh,
        }
        store.replace_manifest(json.dumps(doc, indent=1, sort_keys=True).encode())
        store.drop_commits()  # every journal line is in the manifest now

    @classmethod
    def load(cls, store: OutputStore) -> Manifest | None:
        """The output's manifest, None if there is none; OutputError if it cannot be trusted."""
        path = store.describe(MANIFEST)
        raw = store.read_manifest()
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            if doc.get("version") in OLD_VERSIONS:
                raise ResumeRefused(
                    f"{path} was written by an older batchembed (manifest format {doc.get('version')}, now "
                    f"{FORMAT_VERSION}): its shards do not record the input files and texts a refresh needs. "
                    "Run once with --restart to rebuild this output (every row is embedded again), or "
                    "give output.path a new directory and delete the old one when the new one is complete."
                )
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {doc.get('version')!r}, expected {FORMAT_VERSION}")
            if doc["fingerprint_sha256"] != fingerprint_hash(doc["fingerprint"]):
                raise ValueError("its fingerprint does not match its own checksum")
            shards = [ShardRecord.from_doc(s) for s in doc["shards"]]
            manifest = cls(
                fingerprint=doc["fingerprint"],
                shards=shards,
                resolved=list(doc["resolved"]),
                complete=bool(doc["complete"]),
                version=doc["version"],
                created=doc["created"],
                server=dict(doc.get("server") or {}),
                generation=int(doc.get("generation", 0)),
                work=dict(doc.get("work") or {}),
                retiring=[ShardRecord.from_doc(r) for r in doc.get("retiring", [])],
                retired=list(doc.get("retired", [])),
                published=int(doc.get("published", 0)),
                table=dict(doc.get("table") or {}),
                adopted=list(doc.get("adopted") or []),
                rewrite_only=bool(doc.get("rewrite_only", False)),
                refresh=dict(doc.get("refresh") or {}),
            )
            manifest._replay(store)
            return manifest
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(
                f"{path} is corrupt ({exc}); it cannot be trusted to resume. "
                "Run again with --restart to discard this output and start over."
            ) from None
