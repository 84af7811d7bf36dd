"""One run of a job: wires source -> task -> sender -> output, plus signals and the progress ticker.

Setup (inputs found and checked, the output's lock taken, its manifest opened, the canary), then the
stages of :mod:`pipeline` over this run's chunks, then the ending (report, summary, ``_SUCCESS``).
What a request goes through is the :mod:`sender`'s; what makes a unit count is the :mod:`output`'s.
A run may be confined to a subset of the job's units (``units``): a ``--shard`` part or a Ray
worker's slice is this same run on its units.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from batchembed import __version__
from batchembed.exitcodes import ExitCode
from batchembed.faults import with_path
from batchembed.human import plural
from batchembed.input.checks import check_inputs
from batchembed.input.chunks import iter_chunks, pending_rows, retry_chunks
from batchembed.input.discover import discover
from batchembed.input.files import FileCache, SourceFile, released_as_read
from batchembed.input.read import check_columns
from batchembed.input.units import Unit
from batchembed.job.fingerprint import fingerprint_hash, job_fingerprint
from batchembed.job.resolved import ResolvedJob
from batchembed.output.commit import JobOutput, RetryUnit
from batchembed.output.input_diff import first_ordinal
from batchembed.output.journal.segments import journal_store
from batchembed.output.journal.writer import Journal
from batchembed.output.layout import TRUNCATED
from batchembed.output.manifest import Manifest
from batchembed.output.store import open_store, storage_options
from batchembed.run.pipeline import Pipeline
from batchembed.run.progress import Progress
from batchembed.run.rowcount import RowCount
from batchembed.sending.limits import RateLimits
from batchembed.sending.sender import Sender, SendHooks
from batchembed.sending.server_checks import ServedModel, UsageCheck, full_vector_probe, run_canary
from batchembed.stats import Stats
from batchembed.tasks import Request, Task
from batchembed.tasks.normalize import learn_unit_norm, report_fields
from batchembed.tasks.tokens import TokenCounter

#: Rows per chunk: the grain of text building, token counting and dedup.
CHUNK_ROWS = 4096
#: Seconds in-flight requests get to finish after SIGINT/SIGTERM before they are abandoned.
STOP_GRACE = 30.0

EXIT_OK, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM = ExitCode.OK, ExitCode.PARTIAL, ExitCode.SIGINT, ExitCode.SIGTERM


class JobRunner:
    """Runs one job (or the subset ``units`` of its units) to completion or a clean stop; ``run()`` returns
    an exit code.

    The engines in :mod:`batchembed.run.engines` subclass it: they pass ``units`` (which units this run
    does), give it their own output (``_make_output``: where a commit goes), limits, and class
    attributes; the Ray driver replaces ``_pipeline`` and a Ray worker ``_check_server``.
    """

    #: Install SIGINT/SIGTERM handlers (only possible in a process's main thread).
    handles_signals = True
    #: A finished run deletes every answer journal left (not a part of a job: other parts may be running).
    clears_journals = True
    #: A finished run publishes the output's table (a part leaves that to the last part to finish).
    publishes = True

    def __init__(
        self,
        resolved: ResolvedJob,
        task: Task,
        provider: Any,
        counter: TokenCounter,
        *,
        stats: Stats,
        quiet: bool = False,
        restart: bool = False,
        retry_failed: bool = True,
        accept_model_change: bool = False,
        units: Callable[[Unit], bool] | None = None,
    ) -> None:
        self.resolved = resolved
        self.job = job = resolved.config
        self.model = resolved.model
        self.task = task
        self.provider = provider
        self.counter = counter
        self.restart = restart
        self.retry_failed = retry_failed
        self.units = units
        self.output = self._make_output()
        self.out = self.output.uri  # for messages
        self.stats = stats
        self.progress = Progress(self.stats, quiet=quiet)
        self.limits = RateLimits(self.model.requests_per_minute, self.model.tokens_per_minute, job.limits.concurrency)
        self.stopping: int | None = None  # the signal number once asked to stop
        self.journal: Journal | None = None
        self.sender: Sender | None = None  # made once the engine's limits are in place
        self._stages: Pipeline | None = None
        self._unresolved = 0
        self.accept_model_change = accept_model_change
        self.usage_check = UsageCheck(self.progress.line, counter.name)
        self.files: FileCache | None = None  # the run's small input files (set when the inputs are found)
        self.served = ServedModel(self.model.name, self.progress.line)

    def _make_output(self) -> JobOutput:
        """Where this run commits its units (an engine's part or worker commits elsewhere)."""
        return JobOutput(open_store(self.job), self.job.output.compression)

    @property
    def manifest(self) -> Manifest | None:
        """The manifest this run records its units in (once opened)."""
        return self.output.manifest

    # ------------------------------------------------------------------------------ public entry

    def run(self) -> int:
        """Run the job in a fresh event loop; return the process exit code."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if self.handles_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            self.progress.close()  # its heartbeat ends with the run, whatever ended it
            await asyncio.to_thread(self.output.release)
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.provider.aclose()
            self.task.close()

    def _on_signal(self, sig: int) -> None:
        if self.stopping is not None:
            # Second signal: leave now. Committed shards are safe; the next run resumes.
            self.progress.close()
            print("batchembed: stopped at once; run the same command again to resume.", file=sys.stderr)
            os._exit(EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM)
        self.stopping = sig
        if self.sender is not None:
            self.sender.stopping = True
        if self._stages is not None:
            self._stages.stop()
        self.progress.line(
            f"{signal.Signals(sig).name}: finishing requests in flight (up to {STOP_GRACE:.0f}s), then stopping; "
            "press Ctrl-C again to stop at once"
        )
        asyncio.get_running_loop().call_later(STOP_GRACE, self._abandon_in_flight)

    def _abandon_in_flight(self) -> None:
        if self._stages is not None:
            self._stages.abandon()

    # ------------------------------------------------------------------------------------ setup

    def fingerprint(self, sources: list[SourceFile] | None = None) -> dict[str, Any]:
        """The job's settings the vectors depend on (the input files are its work, not part of it)."""
        return job_fingerprint(self.resolved, self.task)

    async def _run(self) -> int:
        self.progress.begin()  # a log hears from the run every few seconds from now on, setup included
        known = await asyncio.to_thread(self.output.known_rows)
        self.files = FileCache()  # small input files: read once, kept until the reading is past them
        sources = await asyncio.to_thread(discover, self.job.input.path, storage_options(self.job), self.files, known)
        columns = self.task.columns
        await asyncio.to_thread(self.output.acquire, self.restart)  # one writer per output (or part)
        manifest = await asyncio.to_thread(self.output.open, self.fingerprint(), self.restart)
        diff = await asyncio.to_thread(self.output.refresh_plan, sources)
        work = self.output.work_files(sources)
        for src in work:
            await asyncio.to_thread(check_columns, src, columns, self.job)
        if work:
            held = []
            if self.job.input.id:
                held = await asyncio.to_thread(self.output.held_ids, self.job.input.id, diff)
            await asyncio.to_thread(check_inputs, self.job, work, columns, held)
        await asyncio.to_thread(self.output.begin_refresh, diff, sources, self.job.output.max_removed)
        self.stats.note_refresh(diff, manifest)
        if self.output.finished_before():
            self.progress.line(
                f"{self.out}: job already complete and up to date with its {plural(len(sources), 'input file')} "
                f"({manifest.rows():,} rows); nothing to do"
            )
            return EXIT_OK
        if manifest.generation and (diff.stale or diff.added):
            self.progress.line(self.output.describe_refresh(diff))
        if work or (self.retry_failed and manifest.unresolved_failures()):
            await self._check_server(manifest)  # nothing to send (a refresh that only removes): no canary
        self.stats.rows_resumed = manifest.rows()
        self.journal = Journal(
            journal_store(self.output.store),
            fingerprint_hash(manifest.fingerprint),
            self.task.journal_codec(),
            self.stats,
            committed=self.output.committed(),
        )
        self.output.reuse_answers(self.task)
        retry_units = await asyncio.to_thread(self.output.retry_plan, sources) if self.retry_failed else []
        # a subset's share of the rows is known only once its units are read
        todo = pending_rows(sources, manifest) if self.units is None else None
        if todo is not None:
            todo += sum(len(rows) for _, _, rows in retry_units)
        self.stats.rows_total = todo
        if todo is None and self.units is None:  # CSV / JSON Lines: counted in the background for the total
            self.progress.count_rows(RowCount(sources, manifest, columns[0], sum(len(r) for _, _, r in retry_units)))
        if manifest.shards:
            self.progress.line(
                f"resuming {self.out}: {plural(len(manifest.shards), 'shard')} ({manifest.rows():,} rows) "
                "already committed"
            )
        self.sender = self._make_sender()
        self.progress.start()
        failed = True
        finished = False
        try:
            await self._pipeline(sources, columns, retry_units)
            failed = False
            finished = self.stopping is None
        except OSError as exc:  # pyarrow's write errors name no file: name the output directory
            raise with_path(exc, self.out) from None
        finally:
            self.progress.close()
            # a finished run has committed every unit it could: no journal is worth keeping
            await asyncio.to_thread(self.journal.close, finished and self.clears_journals)
            if self.journal.error:
                self.progress.line(f"warning: the answer journal stopped writing: {self.journal.error}")
            try:
                self._unresolved = await asyncio.to_thread(self.output.close, self._report)
            except OSError:
                if not failed:  # a full disk fails the report too: keep the first, real, error
                    raise
        if finished and self.publishes and self._every_unit_done():
            await asyncio.to_thread(
                self.output.publish, self._table(), self.job.output.history_days, self.progress.line
            )
        return self._conclude()

    def _every_unit_done(self) -> bool:
        """Whether this run reached every unit of the job (an engine that leaves some for later says no)."""
        return True

    def _table(self):
        """``publish(shards, tag)``: the Delta table of this output (publish/)."""
        from batchembed.output.publish.table import delta_publisher

        return delta_publisher(self.output.store, self.job)

    def _make_sender(self) -> Sender:
        sender = Sender(
            self.task,
            self.limits,
            self.stats,
            max_retries=self.job.limits.max_retries,
            hooks=SendHooks(sent=self._sent, answered=self._answered, usage=self.usage_check.observe),
            shorten=getattr(self.task, "shorten", None),
        )
        sender.stopping = self.stopping is not None
        return sender

    def _sent(self, request: Request) -> None:
        self.journal.sent(request)

    def _answered(self, request: Request, answer: Any) -> None:
        self.journal.answered(request)
        self.served.observe(getattr(answer, "model", None))

    async def _check_server(self, manifest: Manifest) -> None:
        """The canary: teaches the limiter the server's limits and refuses a model swapped behind its name."""
        if await self._canary(manifest, self.accept_model_change, self.progress.line):
            await asyncio.to_thread(manifest.save, self.output.store)

    async def _canary(self, manifest: Manifest, accept_change: bool, say) -> bool:
        """Embed the canary text against ``manifest`` (recording it there); False for rerank jobs (none)."""
        if self.job.is_rerank:
            return False
        vector = await run_canary(
            self.provider,
            self.limits,
            manifest,
            self.served,
            max_retries=self.job.limits.max_retries,
            accept_change=accept_change,
            where=str(self.out),
            say=say,
        )
        if getattr(self.task, "dim", 0) is None:
            self.task.dim = len(vector)
        check = getattr(self.task, "vector_check", None)
        if check is not None:  # whether the model's vectors are unit length: once per job, kept in the manifest
            check.say = say
            check.unit_norm = await learn_unit_norm(
                manifest,
                known=self.resolved.model_unit_norm,
                canary=vector,
                full_width=self.job.model.dimensions is None,
                probe=full_vector_probe(self.provider, self.limits, self.job.limits.max_retries),
                say=say,
            )
        return True

    # --------------------------------------------------------------------------------- pipeline

    async def _pipeline(self, sources, columns, retry_units: list[RetryUnit]) -> None:
        """Run the stages over this run's chunks (the Ray driver hands the units to workers instead)."""
        window = max(4, -(-self.job.limits.concurrency * self.model.batch_inputs * 2 // CHUNK_ROWS) + 2)
        self._stages = Pipeline(
            self.task,
            self.journal,
            self.sender,
            self.output,
            self.stats,
            tick=self._tick,
            served=self.served,
            window=window,
            workers=self.job.limits.concurrency,
        )
        if self.stopping is not None:  # a signal before the stages existed
            self._stages.stop()
        await self._stages.run(self._chunk_stream(sources, columns, retry_units))

    def _chunk_stream(self, sources, columns, retry_units: list[RetryUnit]):
        """This run's chunks: previously failed rows first, then the units not yet committed (of ``units``)."""
        chunks = []
        if retry_units:
            resolves = list(dict.fromkeys(f for f, _, _ in retry_units))
            unit = Unit(self.output.retry_unit_name(self.output.next_retry()), None, resolves=resolves)
            unit.sources = list(dict.fromkeys(src.name for _, src, _ in retry_units))
            failures = [(src, rows) for _, src, rows in retry_units]
            chunks.append(retry_chunks(failures, columns, unit, CHUNK_ROWS, self.task.group_key))
        chunks.append(
            released_as_read(
                iter_chunks(
                    sources,
                    self.manifest,
                    columns,
                    self.job.output.shard_rows,
                    CHUNK_ROWS,
                    self.task.group_key,
                    pack_small_files=not self.job.is_rerank,  # the rerank task reads one file per chunk
                    wanted=self.units,  # a part reads only its own units' rows where it can
                    first_ordinal=first_ordinal(self.manifest),
                ),
                self.files,
            )
        )
        for stream in chunks:
            for chunk in stream:
                if self.units is None or self.units(chunk.unit):
                    yield chunk

    def _tick(self) -> None:
        """Twice a second while the pipeline runs: the pace, the progress bar, the journal's fsyncs."""
        self.stats.pace = self.limits.describe()
        self.progress.refresh()
        self.journal.tick()

    # ------------------------------------------------------------------------------------- ending

    def _report(self, outstanding: int) -> dict[str, Any]:
        """The content of ``_report.json``."""
        return self.stats.report(
            limits=self.limits.report(),
            served_model=self.served.served,
            usage_ratio=round(self.usage_check.ratio, 3) if self.usage_check.ratio else None,
            version=__version__,
            model=self.model.name,
            provider=self.model.provider,
            dimensions=self.task.metadata().get("dimensions"),
            output=str(self.out),
            failed_rows_outstanding=outstanding,
            **report_fields(self.task, self.manifest),
        )

    def _conclude(self) -> int:
        s = self.stats
        if self.stopping is not None:
            self.progress.line(
                f"stopped: {s.rows_done:,} rows done this run; committed shards are kept. "
                "Run the same command again to resume."
            )
            return EXIT_SIGINT if self.stopping == signal.SIGINT else EXIT_SIGTERM
        verb = "scored" if self.job.is_rerank else "embedded"
        self.progress.line(self.progress.summary(verb, str(self.out)))
        if s.refresh.get("generation"):
            self.progress.line(
                f"refresh: {s.rows_reused:,} rows reused from the output, "
                f"{max(0, s.rows_embedded - s.rows_reused - s.rows_recovered):,} bought, {s.rows_removed:,} removed "
                f"({s.refresh['files_added']} files added, {s.refresh['files_changed']} changed, "
                f"{s.refresh['files_removed']} removed, {s.refresh['files_unchanged']} unchanged and not read)"
            )
        if s.rows_recovered or s.rows_resent:
            self.progress.line(
                f"after the interrupted run: {s.rows_recovered:,} rows recovered from its journal, "
                f"{s.rows_resent:,} rows sent again (their answers were still in flight when it stopped)"
            )
        if s.rows_truncated:
            self.progress.line(
                f"{plural(s.rows_truncated, 'row')} cut to fit, listed in {self.output.store.describe(TRUNCATED)}"
            )
        if self._unresolved:
            self.progress.line(
                f"{self._unresolved:,} rows failed and are listed in "
                f"{self.output.store.describe(self.output.failed_name)}; run the same command again to retry them"
            )
            return EXIT_PARTIAL
        self.output.complete(self.progress.line)
        return EXIT_OK
