"""Keeping a job's sinks equal to its output's Delta table: the one entry point every mode uses.

A run (whole, ``--shard`` completion, Ray driver, batch tier) checks the sinks' shape before it
buys anything (``SinkSync.preflight``), and syncs them right after it publishes the table (``wrap``
puts the sync between the Delta commit and the deletion of the files it replaced, so a sync can
read the rows that left). A run with nothing to do catches the sinks up (``catch_up``), and so does
``batchembed sync JOB [--sink TABLE]`` (``sync_command``), which never embeds anything.

A sink that cannot be reached or refuses never fails the run's embedding work: the table is
published first, the sink is reported behind and the run exits ``SINK_BEHIND``; the next ``run``
or ``sync`` catches it up from the version it holds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from batchembed.errors import BatchEmbedError, ConfigError, OutputError, redact
from batchembed.exitcodes import ExitCode
from batchembed.failpoints import failpoint
from batchembed.input.read import iter_batches
from batchembed.job.config import JobConfig
from batchembed.output.publish.files import read_arrow_schema
from batchembed.output.publish.stores import delta_storage_options
from batchembed.output.store import output_location, storage_options
from batchembed.sinks import changes
from batchembed.sinks.lancedb import LanceSink
from batchembed.sinks.postgres import PostgresSink
from batchembed.sinks.shape import Expected, expected
from batchembed.tasks.ids import id_column_name

#: Every step of a sync a kill test stops at (``BATCHEMBED_FAILPOINT``), in the order a sync passes them.
FAILPOINTS = (
    "sink-before-sync",  # the Delta commit is made, no sink synced yet
    "sink-postgres-begin",
    "sink-postgres-copied",
    "sink-postgres-applied",
    "sink-postgres-before-commit",
    "sink-lancedb-begin",
    "sink-lancedb-merged",
    "sink-lancedb-applied",
    "sink-lancedb-tagged",
)


def columns_of(job: JobConfig) -> changes.Shape:
    """The columns a sink of ``job`` holds, named as in the shards."""
    id_name = id_column_name(job)
    return changes.Shape(id_name, [k for k in job.input.keep if k != id_name], job.output.column)


def sinks_of(job: JobConfig, only: str | None = None) -> list[Any]:
    """The job's sinks (only the one whose table is ``only``, when given)."""
    found = [
        PostgresSink(s) if s.kind == "postgres" else LanceSink(s, storage_options(job))
        for s in job.sink
        if only is None or s.table == only
    ]
    if only is not None and not found:
        tables = ", ".join(s.table for s in job.sink) or "none"
        raise ConfigError(f"--sink {only}: the job has no sink with that table (its sinks: {tables})")
    return found


def expected_from_output(job: JobConfig, files: list[str]) -> Expected | None:
    """The sinks' shape from a shard of the output (None when it has none)."""
    if not files:
        return None
    cols = columns_of(job)
    return expected(read_arrow_schema(output_location(job), files[0]), cols.id, cols.kept, cols.vector)


def expected_from_input(job: JobConfig, source: Any, dim: int | None) -> Expected | None:
    """The sinks' shape before any shard exists: the id and kept columns' types from the input's first rows."""
    cols = columns_of(job)
    wanted = [c for c in dict.fromkeys([job.input.id, *cols.kept]) if c]
    batch = next(iter(iter_batches(source, wanted, 0, batch_rows=16)), None) if wanted else None
    if batch is None and wanted:
        return None
    fields = [pa.field(cols.id, batch.schema.field(job.input.id).type if job.input.id else pa.string())]
    fields += [batch.schema.field(k) for k in cols.kept]
    return expected(pa.schema(fields), cols.id, cols.kept, cols.vector, dim)


def expected_for_run(job: JobConfig, manifest: Any, sources: list[Any], task: Any) -> Expected | None:
    """The shape a run's sinks must have: from a shard when the output has one, else from the input."""
    if manifest.shards:
        return expected_from_output(job, [manifest.shards[0].name])
    dim = task.vectors.dim if task.vectors is not None else None
    return expected_from_input(job, sources[0], dim) if sources else None


class SinkSync:
    """The sinks of one run or ``sync`` command, and which of them are behind the table."""

    def __init__(self, job: JobConfig, say: Callable[[str], None], only: str | None = None) -> None:
        self.job = job
        self.say = say
        self.sinks = sinks_of(job, only)
        self.behind: list[str] = []

    def preflight(self, shape: Expected | None) -> None:
        """Before anything is bought: a sink whose table has another shape stops the run
        (``SinkShapeError``, one sentence); a sink that cannot be reached now is only announced."""
        if shape is None:
            return
        for sink in self.sinks:
            try:
                sink.check(shape)
            except ConfigError:  # another shape, or the sinks extra not installed: before anything is bought
                raise
            except BatchEmbedError as exc:
                self.say(f"warning: {redact(str(exc))}; the run goes on and syncs it once it can be reached")

    def wrap(self, publish: Callable[..., Any]) -> Callable[..., Any]:
        """``publish`` followed by a sync of every sink (between the Delta commit and the retiring of files)."""

        def publish_then_sync(*args: Any, **kwargs: Any) -> Any:
            version = publish(*args, **kwargs)
            failpoint("sink-before-sync")
            self.sync_all()
            return version

        return publish_then_sync

    def catch_up(self) -> None:
        """Bring every sink to the table's current version (a run with nothing else to do)."""
        self.sync_all()

    def sync_all(self) -> None:
        """Sync every sink; one behind is recorded and said, never raised."""
        self.behind = []
        if not self.sinks:
            return
        where = output_location(self.job)
        options = delta_storage_options(where)
        now = changes.current(where, options)
        if now is None:
            return  # no table yet: nothing to hold
        shape = expected_from_output(self.job, sorted(now[2]))
        if shape is None:
            self.say("sinks: the table has no files yet; nothing to sync")
            return
        for sink in self.sinks:
            try:
                done = sink.sync(where, options, shape, columns_of(self.job), self.say)
            except (BatchEmbedError, OSError) as exc:
                self.behind.append(sink.name)
                self.say(f"sink behind: {redact(str(exc))}")
                continue
            if done is not None:
                self.say(describe(sink.name, done))

    @property
    def syncing(self) -> bool:
        """Whether a sink's sync is under way."""
        return any(getattr(sink, "syncing", False) for sink in self.sinks)

    def cancel(self) -> None:
        """Cancel the syncs under way (called from another thread when a stopped run's grace is over); a
        sink that cannot cancel finishes its sync (the stop's watchdog bounds the wait)."""
        for sink in self.sinks:
            cancel = getattr(sink, "cancel", None)
            if cancel is not None:
                cancel()

    def exit_code(self, code: int) -> int:
        """``code``, or ``SINK_BEHIND`` when the run succeeded but a sink could not be synced."""
        if code == ExitCode.OK and self.behind:
            self.say(
                f"the output is published; {len(self.behind)} sink(s) behind it ({', '.join(self.behind)}): "
                f"`batchembed sync` or the next run catches them up without buying anything "
                f"(exit code {int(ExitCode.SINK_BEHIND)})"
            )
            return ExitCode.SINK_BEHIND
        return code


def describe(name: str, done: Any) -> str:
    """One line saying what a sync did."""
    if not done.moved:
        return f"sink {name}: already at version {done.version}"
    if done.full and done.reason == "first load":
        return f"sink {name}: loaded at version {done.version}: {done.written:,} rows"
    if done.full:
        return f"sink {name}: reloaded in full at version {done.version} ({done.reason}): {done.written:,} rows"
    return f"sink {name}: synced to version {done.version}: {done.written:,} rows written, {done.deleted:,} deleted"


def for_run(job: JobConfig, say: Callable[[str], None]) -> SinkSync | None:
    """The sinks of a run, or None when the job has none."""
    return SinkSync(job, say) if job.sink else None


def sync_command(job: JobConfig, only: str | None = None) -> int:
    """``batchembed sync JOB [--sink TABLE]``: every sink (or one) to the table's current version; embeds nothing."""

    def say(line: str) -> None:
        print(f"batchembed: {line}", file=sys.stderr, flush=True)

    if not job.sink:
        raise ConfigError("the job declares no [[sink]]: nothing to sync")
    sinks = SinkSync(job, say, only)
    if changes.current(output_location(job), _options(job)) is None:
        raise OutputError(f"{job.output.path}: no Delta table yet: run the job first")
    sinks.sync_all()
    return ExitCode.SINK_BEHIND if sinks.behind else ExitCode.OK


def _options(job: JobConfig) -> dict[str, str]:
    return delta_storage_options(output_location(job))
