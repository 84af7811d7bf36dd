"""The output side of a run: the commit protocol on top of the store's bytes.

It owns what makes a unit count: open (or resume) the manifest, write a unit's shard with its
``_failed/`` and ``_truncated/`` files, record it in the manifest (the commit point), list what is
committed, remove what is not, and at the end rebuild ``_failed.parquet``/``_truncated.parquet``
and write ``_report.json`` and ``_SUCCESS``. The store (``store/``: a local directory, an object
store) stays the byte layer underneath: whole-or-nothing files, a conditional manifest write, a lock.

It lives here rather than in ``store/`` because it is the layer *above* the byte stores: it reads
and writes the manifest (``manifest``), the cut rows' files (``truncated``) and the shards'
metadata (``shard_writer``), none of which a byte store knows about. Like a dlt load package or a datasets
``ArrowWriter``: rows go in piece by piece, and a unit appears whole at its commit or not at all.

Who writes changes where a commit goes, through the output's *role* (``roles``): a whole run commits
into ``_manifest.json``, a ``--shard I/N`` part into its own manifest, a Ray worker hands each written
shard to its driver. The protocol here is the same for all of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from batchembed.errors import InputError
from batchembed.failpoints import failpoint
from batchembed.input.files import SourceFile
from batchembed.input.identity import restat
from batchembed.input.units import Unit
from batchembed.job.config import JobConfig
from batchembed.output import figures
from batchembed.output import refresh as output_refresh
from batchembed.output.file_ends import file_ends
from batchembed.output.input_diff import InputDiff, identity_of, known_rows
from batchembed.output.layout import FAILED_DIR, MANIFEST, SUCCESS
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.output.opening import Preloaded, preload
from batchembed.output.parts import load_whole
from batchembed.output.publish.delta import table_files
from batchembed.output.publish.table import delta_publisher
from batchembed.output.roles import Role, WholeRun
from batchembed.output.shard_writer import shard_metadata
from batchembed.output.store import open_store
from batchembed.output.store.base import OutputStore
from batchembed.output.table_view import groups
from batchembed.output.truncated import write_truncated

#: ``publish(shards, tag)``: makes the Delta table exactly ``shards``; returns the table's version.
Publisher = Callable[..., Any]
#: A failed rows' file, one input file of it, and its rows: what a run retries.
RetryUnit = tuple[str, SourceFile, list[int]]


def job_output(
    job: JobConfig,
    role: Role | None = None,
    around_publish: Callable[[Publisher], Publisher] | None = None,
    id_column: str | None = None,
) -> JobOutput:
    """The output of ``job`` written as ``role`` (a whole run by default), publishing its Delta table;
    ``around_publish`` wraps the publisher (the job's sinks are synced right after the Delta commit);
    ``id_column``: the rows' id column (an embed job's), for the refresh's rows by id."""
    store = open_store(job)
    table = delta_publisher(store, job)
    return JobOutput(
        store,
        job.output.compression,
        role,
        table=around_publish(table) if around_publish is not None else table,
        history_days=job.output.history_days,
        id_column=id_column,
    )


def new_attempt() -> str:
    """A fresh attempt tag for the shard files of one run (8 hex digits)."""
    return os.urandom(4).hex()


class UnitWriter:
    """One unit on its way to a commit: its shard (opened at the first rows), its failed and cut rows."""

    def __init__(self, output: JobOutput, unit: Unit, metadata: dict[str, Any]) -> None:
        self.output = output
        self.unit = unit
        self.file = output.file_name(unit)  # unique to this attempt: a late writer never lands on a commit
        self.metadata = metadata
        self.shard: Any = None  # the store's shard writer, once the first rows arrive
        self.failures: list[pa.Table] = []
        self.cuts: list[pa.Table] = []

    def write(self, rows: pa.Table, failed: pa.Table | None, cut: pa.Table | None) -> None:
        """Append one piece's output rows (one row group) and keep its failed and cut rows."""
        if self.shard is None:
            schema = rows.schema.with_metadata(shard_metadata(self.metadata))
            self.shard = self.output.store.shard_writer(self.file, schema, self.output.compression)
        self.shard.write(rows)
        if failed is not None:
            self.failures.append(failed)
        if cut is not None:
            self.cuts.append(cut)

    def abort(self) -> None:
        """Drop what was written: the unit is not committed (a later run redoes it)."""
        if self.shard is not None:
            self.shard.abort()
            self.shard = None


class JobOutput:
    """Commits the units of one run into the output's manifest, and closes the output at the end.

    ``role`` is who writes (``roles.WholeRun`` by default); ``table(shards, tag)`` publishes the Delta
    table (``publish.table.delta_publisher``), keeping replaced files ``history_days`` days."""

    def __init__(
        self,
        store: OutputStore,
        compression: str,
        role: Role | None = None,
        *,
        table: Callable[..., Any] | None = None,
        history_days: float = 0.0,
        id_column: str | None = None,
    ) -> None:
        self.store = store
        self.id_column = id_column  # the output's id column (rows by id in a refresh's figures); None: rerank
        self.compression = compression
        self.role: Role = role if role is not None else WholeRun()
        self.table = table
        self.history_days = history_days
        self.manifest: Manifest | None = None
        #: The manifest as read before the lock (``known_rows``), reused by ``open`` when unchanged since.
        self.preloaded: Preloaded | None = None
        #: Part of every shard file name this run writes (issue: a writer that lost its lease must
        #: never complete an upload over a committed shard's key).
        self.attempt = new_attempt()
        #: Each committing file's input identities (name -> identity), set by the runner.
        self.identities: dict[str, dict] = {}
        self.sources: dict[str, SourceFile] = {}  # this run's input files by name (``refresh_plan``)

    @property
    def failed_name(self) -> str:
        """Where this run's gathered failed rows go (a ``--shard`` part writes its own)."""
        return self.role.failed_name

    @property
    def report_name(self) -> str:
        """Where this run's report goes."""
        return self.role.report_name

    def file_name(self, unit: Unit) -> str:
        """The shard file for ``unit`` written by this run: ``part-00007-<attempt>.parquet``."""
        return f"{unit.name.removesuffix('.parquet')}-{self.attempt}.parquet"

    @property
    def uri(self) -> Any:
        """The output's location, for messages."""
        return self.store.uri

    # ------------------------------------------------------------------------------ opening

    def acquire(self, restart: bool) -> None:
        """Be admitted as this kind of writer (``OutputLocked`` names a live writer that excludes this run)."""
        self.role.acquire(self, restart)

    def release(self) -> None:
        """Release the lock (or lease)."""
        self.store.release()

    def open(self, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        """Load (or create) the manifest this run records its units in; clean what it does not record."""
        self.manifest = self.role.open(self, fingerprint, restart)
        return self.manifest

    # ------------------------------------------------------------------------------ refreshing

    def known_rows(self) -> dict[str, tuple[dict, int]]:
        """Row counts of the files the output holds whole, by their identity (no lock needed: a hint
        that lets ``discover`` skip opening unchanged files; a wrong hint only costs a read)."""
        try:
            if self.store.manifest_name == MANIFEST:  # a whole run's: read once, reused by ``open`` if unchanged
                self.preloaded = preload(self.store)
                if self.preloaded.manifest is not None:
                    return known_rows(self.preloaded.manifest)
            return known_rows(load_whole(self.store)[0])  # every part's, for a --shard split
        except Exception:  # a missing, foreign or old output: ``open`` gives the real answer
            return {}

    def refresh_plan(self, sources: list[SourceFile]) -> InputDiff:
        """What changed in the inputs since the output's shards read them (nothing written)."""
        self.identities = {src.name: identity_of(src) for src in sources}
        self.sources = {src.name: src for src in sources}
        self.diff = self.role.plan(self, sources)
        return self.diff

    def view(self) -> Manifest:
        """The committed units this run's walk sees (a ``--shard`` part: every part's, as the split's
        generation plan says); ``retiring``: the shards whose vectors a refresh may reuse."""
        return self.role.view(self)

    def work_files(self, sources: list[SourceFile]) -> list[SourceFile]:
        """The input files this run reads (the others are held whole by shards it keeps)."""
        self.reading = output_refresh.work_files(self.view(), sources)
        return self.reading

    def held_ids(self, column: str) -> list[tuple[str, pa.Array]]:
        """Ids of kept rows this run does not read again (for the id check)."""
        return output_refresh.held_ids(self.store, self.view(), column, self.reading)

    def begin_refresh(self, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        """Start a refresh generation if the inputs changed (see ``refresh.begin``)."""
        return self.role.begin_refresh(self, diff, sources, max_removed)

    def refresh_record(self) -> dict[str, Any]:
        """The current refresh generation's figures (``figures``; empty for a first run)."""
        return self.role.refresh_record(self)

    def describe_refresh(self) -> str:
        """One log line on what this refresh does."""
        return output_refresh.describe(self.refresh_record())

    def current_tokens(self) -> int | None:
        """Tokens for the table's current rows (``figures.current_tokens``; a split: every part's)."""
        shards = self.role.current(self)
        return None if shards is None else figures.current_tokens(shards)

    def settle_refresh(self) -> dict[str, Any]:
        """Every unit is committed, the table not yet published: count the generation's rows by id into its
        record (``figures.settle``), saved with the manifest before the publish."""
        record, manifest = self.refresh_record(), self.manifest
        if record and "rows" not in record:
            # the shards this generation replaces were all published when the previous one was (its tag is
            # this generation's number); else an interrupted generation's never were: the table says which
            whole = manifest.published >= manifest.generation
            published = None if whole else table_files(self.store.where)
            compacted = groups(manifest)  # a replaced shard others compacted, then vacuumed: read from them
            if figures.settle(
                self.store, record, manifest.retiring, manifest.shards, self.id_column, published, compacted
            ):
                manifest.save(self.store)
        return record

    def next_retry(self) -> int:
        """The number of the next retry unit (past every retry unit this output ever committed)."""
        numbers = [
            int(m.group(1))
            for s in self.manifest.shards + self.manifest.retiring
            if (m := re.match(r"part-r(\d+)", s.unit_name))
        ]
        return max(numbers, default=-1) + 1

    def check_unchanged(self, unit: Unit) -> None:
        """Refuse to commit rows of a file that changed while this run read it (a torn read)."""
        for name in self.inputs_of(unit):
            src = self.sources.get(name)
            if src is None:
                continue
            now = restat(src)
            if now is not None and now != self.identities[name]:
                raise InputError(
                    f"{src.path} changed while this run read it (size/modification time differ); none of its "
                    "rows from that read were committed. Run the same command again once the file is complete."
                )

    def publish(self, say: Callable[[str], None]) -> None:
        """After every unit is committed: the Delta table becomes the manifest's shards (publish/)."""
        output_refresh.publish(self.store, self.manifest, self.history_days, self.table, say)

    def finished_before(self) -> bool:
        """Whether an earlier run already completed the whole job."""
        return self.manifest.complete and self.store.exists(SUCCESS)

    def committed(self) -> set[str]:
        """Names of the units committed so far (without ``.parquet``: a unit's journal name)."""
        return {s.unit_name for s in self.manifest.shards}

    def retry_unit_name(self, n: int) -> str:
        """Name of the shard holding this run's retried rows (``n`` retry shards exist already)."""
        return self.role.retry_unit_name(n)

    def retry_plan(self, sources: list[SourceFile]) -> list[RetryUnit]:
        """Failed rows of earlier runs, grouped by file: [(failure_file, source, rows)]."""
        by_name = {s.name: s for s in sources}
        plan = []
        for failure_file in self.manifest.unresolved_failures():
            table = self.store.read_table(failure_file, columns=["file", "row"])
            files = table.column("file").to_pylist()
            rows = table.column("row").to_pylist()
            for name in dict.fromkeys(files):
                if name not in by_name:
                    raise InputError(f"{failure_file}: failed rows come from {name}, which is no longer an input")
                plan.append((failure_file, by_name[name], [r for f, r in zip(files, rows, strict=True) if f == name]))
        return plan

    # ----------------------------------------------------------------------------- committing

    def unit(self, unit: Unit, metadata: dict[str, Any]) -> UnitWriter:
        """A writer for ``unit``'s shard; ``metadata`` goes into the shard's Parquet metadata."""
        return UnitWriter(self, unit, metadata)

    def commit(self, writer: UnitWriter) -> ShardRecord:
        """Make a unit durable: shard, its failed and cut rows, then the manifest entry (the commit point)."""
        unit = writer.unit
        self.check_unchanged(unit)
        written = writer.shard.commit()
        n_cut = write_truncated(self.store, writer.file, writer.cuts)
        failpoint("shard-before-manifest")
        failed_file = None
        n_failed = 0
        if writer.failures:
            table = pa.concat_tables(writer.failures)
            n_failed = table.num_rows
            failed_file = f"{FAILED_DIR}/{writer.file}"
            self.store.write_table(failed_file, table)
        record = ShardRecord(
            name=writer.file,
            unit=unit.name.removesuffix(".parquet"),
            inputs=self.inputs_of(unit),
            kind=unit.kind,
            file=unit.source.name if unit.source else None,
            start=unit.start,
            end=unit.end if unit.end is not None else unit.start,
            eof=unit.eof,
            rows=written.rows,
            failed=n_failed,
            failed_file=failed_file,
            size=written.size,
            checksum=written.checksum,
            tokens=unit.tokens,
            resolves=list(unit.resolves),
            files=[[name, rows] for name, rows in unit.files],
            truncated=n_cut,
            ends=file_ends(unit, self.sources, self.manifest.shards),
            reused_tokens=unit.reused_tokens,
            counted=unit.counted,
        )
        self.record(record, list(unit.resolves))
        return record

    def inputs_of(self, unit: Unit) -> dict[str, dict]:
        """The identities of the input files whose rows ``unit`` holds."""
        if unit.files:
            names = [name for name, _ in unit.files]
        elif unit.source is not None:
            names = [unit.source.name]
        else:
            names = list(unit.sources)
        return {name: self.identities[name] for name in names if name in self.identities}

    def record(self, record: ShardRecord, resolves: list[str]) -> None:
        """The commit point: record a written shard in the manifest (a Ray worker hands it back instead)."""
        self.role.record(self, record, resolves)

    # --------------------------------------------------------------------------------- ending

    def close(self, report: Callable[[int], dict[str, Any]]) -> int:
        """Rebuild ``_failed.parquet`` and ``_truncated.parquet``, write the report; return the rows still failed.

        ``report(outstanding)`` builds the report's content once the failed rows are counted."""
        return self.role.close(self, report)

    def complete(self, say: Callable[[str], None]) -> None:
        """Every unit is committed: mark the manifest complete (a whole run writes ``_SUCCESS``; the last part
        of a split publishes the table and writes it)."""
        self.role.complete(self, say)
