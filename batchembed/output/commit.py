"""The output side of a run: the commit protocol on top of the store's bytes.

It owns what makes a unit count: open (or resume) the manifest, write a unit's shard with its
``_failed/`` and ``_truncated/`` files, record it in the manifest (the commit point), list what is
committed, remove what is not, and at the end rebuild ``_failed.parquet``/``_truncated.parquet``
and write ``_report.json`` and ``_SUCCESS``. The store (``store/``: a local directory, an object
store) stays the byte layer underneath: whole-or-nothing files, a conditional manifest write, a lock.

It lives here rather than in ``store/`` because it is the layer *above* the byte stores: it reads
and writes the manifest (``checkpoint``), the cut rows' files (``truncated``) and the shards'
metadata (``writer``), none of which a byte store knows about. Like a dlt load package or a datasets
``ArrowWriter``: rows go in piece by piece, and a unit appears whole at its commit or not at all.

The engines change where a commit goes through subclasses: a ``--shard I/N`` part commits into its
own manifest (``engines/shard.py``), a Ray worker hands each written shard to its driver
(``engines/ray_engine.py``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from batchembed.errors import InputError, ResumeRefused
from batchembed.failpoints import failpoint
from batchembed.input.files import SourceFile
from batchembed.input.identity import restat
from batchembed.input.units import Unit
from batchembed.output import refresh as output_refresh
from batchembed.output.cache import OutputCache
from batchembed.output.file_ends import file_ends
from batchembed.output.input_diff import InputDiff, diff_inputs, identity_of, known_rows
from batchembed.output.layout import FAILED, FAILED_DIR, REPORT, SUCCESS, retry_shard
from batchembed.output.manifest import Manifest, ShardRecord, open_output, remove_orphans
from batchembed.output.shard_writer import shard_metadata
from batchembed.output.store.admission import admit
from batchembed.output.store.base import OutputStore
from batchembed.output.truncated import rebuild_truncated, write_truncated

#: A failed rows' file, one input file of it, and its rows: what a run retries.
RetryUnit = tuple[str, SourceFile, list[int]]


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
    """Commits the units of one run into the output's manifest, and closes the output at the end."""

    #: Where this run's failed rows and report go (a ``--shard`` part writes its own).
    failed_name = FAILED
    report_name = REPORT

    def __init__(self, store: OutputStore, compression: str) -> None:
        self.store = store
        self.compression = compression
        self.manifest: Manifest | None = None
        #: Part of every shard file name this run writes (issue: a writer that lost its lease must
        #: never complete an upload over a committed shard's key).
        self.attempt = new_attempt()
        #: Each committing file's input identities (name -> identity), set by the runner.
        self.identities: dict[str, dict] = {}
        self._split_done = False  # a finished --shard split rerun as a whole run: nothing to do
        self.sources: dict[str, SourceFile] = {}  # this run's input files by name (``refresh_plan``)

    def file_name(self, unit: Unit) -> str:
        """The shard file for ``unit`` written by this run: ``part-00007-<attempt>.parquet``."""
        return f"{unit.name.removesuffix('.parquet')}-{self.attempt}.parquet"

    @property
    def uri(self) -> Any:
        """The output's location, for messages."""
        return self.store.uri

    # ------------------------------------------------------------------------------ opening

    def acquire(self, restart: bool) -> None:
        """Be admitted as the output's one writer (``OutputLocked`` names a live writer that excludes this run)."""
        from batchembed.output.parts import finished_split, refuse_mixing

        admit(self.store, None)  # refused while any other writer (a part of a split too) is live
        self._split_done = not restart and finished_split(self.store)
        if not restart and not self._split_done:  # --restart discards a split output whole
            refuse_mixing(self.store, None)

    def release(self) -> None:
        """Release the lock (or lease)."""
        self.store.release()

    def open(self, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        """Load (or create) the manifest this run records its units in; clean what it does not record."""
        if self._split_done:  # a finished split: nothing to do (see ``finished_before``)
            from batchembed.output.parts import finished_split_manifest

            self.manifest = finished_split_manifest(self.store, fingerprint)
            return self.manifest
        self.manifest = open_output(self.store, fingerprint, restart)
        self.store.abort_stale_uploads()  # a killed run's unfinished shard uploads: no live writer owns them
        return self.manifest

    # ------------------------------------------------------------------------------ refreshing

    def known_rows(self) -> dict[str, tuple[dict, int]]:
        """Row counts of the files the output holds whole, by their identity (no lock needed: a hint
        that lets ``discover`` skip opening unchanged files; a wrong hint only costs a read)."""
        try:
            return known_rows(Manifest.load(self.store))
        except Exception:  # a missing, foreign or old output: ``open`` gives the real answer
            return {}

    def refresh_plan(self, sources: list[SourceFile]) -> InputDiff:
        """What changed in the inputs since the output's shards read them (nothing written)."""
        self.identities = {src.name: identity_of(src) for src in sources}
        self.sources = {src.name: src for src in sources}
        self.diff = diff_inputs(self.manifest, sources)
        return self.diff

    def work_files(self, sources: list[SourceFile]) -> list[SourceFile]:
        """The input files this run reads (the others are held whole by shards it keeps)."""
        self.reading = output_refresh.work_files(output_refresh.kept(self.manifest, self.diff), sources)
        return self.reading

    def held_ids(self, column: str, diff: InputDiff) -> list[tuple[str, pa.Array]]:
        """Ids of kept rows this run does not read again (for the id check)."""
        return output_refresh.held_ids(self.store, self.manifest, diff, column, self.reading)

    def begin_refresh(self, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        """Start a refresh generation if the inputs changed (see ``output_refresh.begin``)."""
        if self._split_done:  # a finished split, rerun whole: its parts own it
            if diff.added or diff.changed or diff.removed:
                raise ResumeRefused(
                    f"{self.store.uri} was written by --shard I/N parts and its inputs changed since "
                    f"({output_refresh.describe(diff, self.manifest)}); run every part again to refresh it"
                )
            return False
        return output_refresh.begin(self.store, self.manifest, diff, sources, max_removed)

    def describe_refresh(self, diff: InputDiff) -> str:
        """One log line on what this refresh does."""
        return output_refresh.describe(diff, self.manifest)

    def reuse_answers(self, task: Any) -> None:
        """Let the task find vectors the output already holds (kept and retiring shards)."""
        if not hasattr(task, "output_cache") or not (self.manifest.shards or self.manifest.retiring):
            return
        if self.manifest.complete:
            return
        task.output_cache = OutputCache(
            self.store, self.manifest.shards + self.manifest.retiring, task.job.output.column
        )

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

    def publish(self, table: Any, history_days: float, say: Callable[[str], None]) -> None:
        """After every unit is committed: the Delta table becomes the manifest's shards (publish/)."""
        output_refresh.publish(self.store, self.manifest, history_days, table, say)

    def finished_before(self) -> bool:
        """Whether an earlier run already completed the whole job."""
        return self.manifest.complete and self.store.exists(SUCCESS)

    def committed(self) -> set[str]:
        """Names of the units committed so far (without ``.parquet``: a unit's journal name)."""
        return {s.unit_name for s in self.manifest.shards}

    def retry_unit_name(self, n: int) -> str:
        """Name of the shard holding this run's retried rows (``n`` retry shards exist already)."""
        return retry_shard(n)

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
            sha256=written.sha256,
            tokens=unit.tokens,
            resolves=list(unit.resolves),
            files=[[name, rows] for name, rows in unit.files],
            truncated=n_cut,
            ends=file_ends(unit, self.sources, self.manifest.shards),
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
        self.manifest.commit(self.store, record, resolves)

    # --------------------------------------------------------------------------------- ending

    def close(self, report: Callable[[int], dict[str, Any]]) -> int:
        """Rebuild ``_failed.parquet`` and ``_truncated.parquet``, write the report; return the rows still failed.

        ``report(outstanding)`` builds the report's content once the failed rows are counted."""
        if self.manifest is None:
            return 0
        unresolved = self.manifest.unresolved_failures()
        outstanding = self.manifest.unresolved_rows(self.store)
        if unresolved:
            tables = (self.store.read_table(f) for f in unresolved)
            self.store.write_table(self.failed_name, pa.concat_tables(tables))
        elif self.store.exists(self.failed_name):
            self.store.delete(self.failed_name)
        rebuild_truncated(self.store, self.manifest)
        self.store.write_bytes(self.report_name, json.dumps(report(outstanding), indent=2).encode())
        return outstanding

    def complete(self, say: Callable[[str], None]) -> None:
        """Every unit is committed: mark the manifest complete, drop what it does not record, write _SUCCESS."""
        self.manifest.complete = True
        self.manifest.save(self.store)
        remove_orphans(self.store, self.manifest)  # nothing but recorded files once _SUCCESS is there
        self.store.write_bytes(SUCCESS, b"")
