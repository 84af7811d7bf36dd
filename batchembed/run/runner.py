"""One run of a job: wires source -> task -> sender -> output, plus signals and the progress ticker.

Setup (inputs found and checked, the output's lock taken, its manifest opened, the canary), then the
stages over this run's chunks, then the ending (report, summary, ``_SUCCESS``). What a request goes
through is the sender's; what makes a unit count is the output's. What an engine changes — which units
run, where a commit goes, which limits apply, where the stages run, what signals, journals and
publishing do — is the run's ``Placement`` (``placement``), never a subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import signal
from typing import Any

from batchembed import __version__
from batchembed.exitcodes import ExitCode
from batchembed.faults import with_path
from batchembed.human import plural
from batchembed.input.chunks import CHUNK_ROWS, iter_chunks, pending_rows, retry_chunks
from batchembed.input.discover import discover
from batchembed.input.files import FileCache, released_as_read
from batchembed.input.units import Unit
from batchembed.job.fingerprint import fingerprint_hash, job_fingerprint
from batchembed.job.resolved import ResolvedJob
from batchembed.output.commit import RetryUnit, job_output
from batchembed.output.input_diff import first_ordinal
from batchembed.output.journal.segments import journal_store
from batchembed.output.journal.writer import Journal
from batchembed.output.layout import TRUNCATED
from batchembed.output.manifest import Manifest
from batchembed.output.store import storage_options
from batchembed.output.table_view import cache_files
from batchembed.run.allocators import memory_report, setup_frozen
from batchembed.run.before_buying import check_before_buying
from batchembed.run.ending import ending_lines
from batchembed.run.pipeline import LocalStages
from batchembed.run.placement import Canary, Placement
from batchembed.run.progress import Progress
from batchembed.run.rowcount import RowCount
from batchembed.run.stopping import StopControl, Stopped
from batchembed.run.stopping import exit_code as stop_exit_code
from batchembed.sending.outage import server_watch
from batchembed.sending.sender import Sender, SendHooks
from batchembed.sending.server_checks import ServedModel, UsageCheck, full_vector_probe, run_canary
from batchembed.sinks.sync import expected_for_run, for_run
from batchembed.stats import Stats
from batchembed.tasks import Request, Task
from batchembed.tasks.ids import id_column_name
from batchembed.tasks.normalize import learn_unit_norm
from batchembed.tasks.tokens import TokenCounter

EXIT_OK, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM = ExitCode.OK, ExitCode.PARTIAL, ExitCode.SIGINT, ExitCode.SIGTERM


class JobRunner:
    """Runs one job (or the units its ``placement`` gives it) to completion or a clean stop; ``run()`` returns
    an exit code."""

    def __init__(
        self,
        resolved: ResolvedJob,
        task: Task,
        provider: Any,
        counter: TokenCounter,
        *,
        stats: Stats,
        placement: Placement | None = None,
        quiet: bool = False,
        restart: bool = False,
        retry_failed: bool = True,
        accept_model_change: bool = False,
    ) -> None:
        self.resolved = resolved
        self.job = resolved.config
        self.model = resolved.model
        self.task = task
        self.provider = provider
        self.counter = counter
        self.placement = placement = placement if placement is not None else Placement()
        self.restart = restart
        self.retry_failed = retry_failed
        self.units = placement.units
        id_column = None if self.job.is_rerank else id_column_name(self.job)  # rows by id in a refresh's figures
        self.stats = stats
        self.progress = Progress(self.stats, quiet=quiet)
        #: The job's [[sink]]s: checked before anything is bought, synced right after each publish.
        self.sinks = for_run(self.job, self.progress.line) if placement.syncs_sinks else None
        self.output = job_output(
            self.job, placement.role(), self.sinks.wrap if self.sinks is not None else None, id_column
        )
        self.out = self.output.uri  # for messages
        self.limits = placement.limits(resolved)
        self.stopping: int | None = None  # the signal number (or ``stopping.OUTAGE``) once asked to stop
        #: The stop (signals, an outage outlasting its window) and its deadline.
        self.stops = StopControl(self, self.job.limits.stop_grace_seconds)
        self.watch = server_watch(resolved, self.progress.line, self.stops.outage, self.stats.outages.append)
        self.journal: Journal | None = None
        self.sender: Sender | None = None  # made once the run is set up
        self._unresolved = 0
        self.accept_model_change = accept_model_change
        self.usage_check = UsageCheck(self.progress.line, counter.name)
        self.files: FileCache | None = None  # the run's small input files (set when the inputs are found)
        self.served = ServedModel(self.model.name, self.progress.line)
        self.stages = (placement.stages or LocalStages)(self)

    @property
    def manifest(self) -> Manifest | None:
        """The manifest this run records its units in (once opened)."""
        return self.output.manifest

    # ------------------------------------------------------------------------------ public entry

    def run(self) -> int:
        """Run the job in a fresh event loop (inside the placement's session); return the exit code."""
        try:
            with self.placement.session():
                return asyncio.run(self._main())
        finally:
            self.stops.disarm()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if self.placement.signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stops.on_signal, sig)
        try:
            return await self._run()
        finally:
            self.progress.close()  # its heartbeat ends with the run, whatever ended it
            await asyncio.to_thread(self.output.release)
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.provider.aclose()
            self.task.close()

    # ------------------------------------------------------------------------------------ setup

    def fingerprint(self) -> dict[str, Any]:
        """The job's settings the vectors depend on (``job_fingerprint``: the input files are its work)."""
        return job_fingerprint(self.resolved, self.task)

    async def _run(self) -> int:
        self.progress.begin()  # a log hears from the run every few seconds from now on, setup included
        seen = await asyncio.to_thread(self.placement.seen_inputs, self)  # the batch tier's plan: a poll reads none
        known = {**seen.rows(), **await asyncio.to_thread(self.output.known_rows)}
        self.files = FileCache()  # small input files: read once, kept until the reading is past them
        sources = await asyncio.to_thread(
            discover, self.job.input.path, storage_options(self.job), self.files, known,
            identity=self.job.input.identity,
        )  # fmt: skip
        columns = self.task.columns
        await asyncio.to_thread(self.output.acquire, self.restart)  # one writer per output (or part)
        manifest = await asyncio.to_thread(self.output.open, self.fingerprint(), self.restart)
        diff = await asyncio.to_thread(self.output.refresh_plan, sources)
        work, types = await asyncio.to_thread(  # the table, the inputs and the column types, before buying
            check_before_buying, self.job, self.output, diff, sources, columns, self.progress.line, seen
        )
        if types is not None:  # every shard gets the table's column types, settled now
            self.task.output_types = types
        await asyncio.to_thread(self.output.begin_refresh, diff, sources, self.job.output.max_removed)
        self.stats.note_refresh(self.output.refresh_record())
        if self.output.finished_before():
            self.progress.line(
                f"{self.out}: job already complete and up to date with its {plural(len(sources), 'input file')} "
                f"({manifest.rows():,} rows); nothing to do"
            )
            if self.sinks is not None:  # a sink left behind by an earlier run catches up (nothing is bought)
                await asyncio.to_thread(self.sinks.catch_up)
                return self.sinks.exit_code(EXIT_OK)
            return EXIT_OK
        if self.output.refresh_record():  # a refresh (begun now, or resumed): what it does
            self.progress.line(self.output.describe_refresh())
        shape = None
        if self.sinks is not None:  # a sink's table of another shape is refused before anything is bought
            shape = await asyncio.to_thread(expected_for_run, self.job, manifest, work or sources, self.task)
            await asyncio.to_thread(self.sinks.preflight, shape)
        if work or (self.retry_failed and manifest.unresolved_failures()):
            try:
                await self.check_server(manifest)  # nothing to send (a refresh that only removes): no canary
            except Stopped:  # a signal while the server was being reached: nothing was sent
                return self._conclude()
            vectors = self.task.vectors
            if shape is not None and shape.dim is None and vectors is not None and vectors.dim:
                # the dimension was learned from the canary: checked before the job's texts are sent
                await asyncio.to_thread(self.sinks.preflight, dataclasses.replace(shape, dim=vectors.dim))
        self.stats.rows_resumed = manifest.rows()
        self.journal = Journal(
            journal_store(self.output.store),
            fingerprint_hash(manifest.fingerprint),
            self.task.journal_codec(),
            self.stats,
            committed=self.output.committed(),
        )
        view = self.output.view()
        if (view.shards or view.retiring) and not manifest.complete:  # a refresh: what the output holds
            self.task.reuse_output(self.output.store, cache_files(view))
        retry_units = await asyncio.to_thread(self.output.retry_plan, sources) if self.retry_failed else []
        todo = pending_rows(sources, manifest) if self.units is None else None  # a subset's: known once read
        self.stats.rows_total = None if todo is None else todo + sum(len(rows) for _, _, rows in retry_units)
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
            # Stopped: a stop while the stages waited on the server outside the pipeline
            with contextlib.suppress(Stopped), setup_frozen():
                await self.stages.run(sources, columns, retry_units)
            failed = False
            finished = self.stopping is None
            if finished and self.placement.publishes and self.stages.every_unit_done():
                # every unit is committed: the refresh's rows by id, for the report and the summary
                self.stats.note_refresh(await asyncio.to_thread(self.output.settle_refresh))
            if finished:
                self.stats.tokens_current = await asyncio.to_thread(self.output.current_tokens)
        except OSError as exc:  # pyarrow's write errors name no file: name the output directory
            raise with_path(exc, self.out) from None
        finally:
            self.progress.close()
            # a finished run has committed every unit it could: no journal is worth keeping
            await asyncio.to_thread(self.journal.close, finished and not self.placement.keeps_journals)
            if self.journal.error:
                self.progress.line(f"warning: the answer journal stopped writing: {self.journal.error}")
            try:
                self._unresolved = await asyncio.to_thread(self.output.close, self._report)
            except OSError:
                if not failed:  # a full disk fails the report too: keep the first, real, error
                    raise
        if finished and self.placement.publishes and self.stages.every_unit_done():
            await asyncio.to_thread(self.output.publish, self.progress.line)
        code = self.stages.conclude(self._conclude)
        return code if self.sinks is None else self.sinks.exit_code(code)

    def _make_sender(self) -> Sender:
        sender = Sender(
            self.task,
            self.limits,
            self.stats,
            max_retries=self.job.limits.max_retries,
            hooks=SendHooks(sent=self._sent, answered=self._answered, usage=self.usage_check.observe),
            shorten=self.task.shorten,
            watch=self.watch,
        )
        sender.stopping = self.stopping is not None
        return sender

    def _sent(self, request: Request) -> None:
        self.journal.sent(request)

    def _answered(self, request: Request, answer: Any) -> None:
        self.journal.answered(request)
        self.served.observe(getattr(answer, "model", None))

    async def check_server(self, manifest: Manifest, canary: Canary | None = None) -> None:
        """The canary (as the placement says, or ``canary``): teaches the limiter the server's limits and
        refuses a model swapped behind its name."""
        canary = canary or self.placement.canary
        if canary is Canary.DEFERRED or (canary is Canary.REMOTE_ONLY and self.model.provider == "local"):
            return  # the batch tier asks when it needs it; a Ray driver loads no local model (its workers check)
        if canary is Canary.WORKER:  # as the driver ran it, on a copy: a worker never saves the driver's manifest
            await self.stops.interruptible(self.canary(copy.deepcopy(manifest), True, lambda _line: None))
            return
        # a stop interrupts it (``Stopped``): the server may be slow, away, or never there
        if await self.stops.interruptible(self.canary(manifest, self.accept_model_change, self.progress.line)):
            await asyncio.to_thread(manifest.save, self.output.store)

    async def canary(self, manifest: Manifest, accept_change: bool, say) -> bool:
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
            watch=self.watch,
        )
        vectors = self.task.vectors
        if vectors is not None:  # whether the model's vectors are unit length: once per job, kept in the manifest
            vectors.learn(len(vector))
            check = vectors.check
            check.say = say
            check.unit_norm = await learn_unit_norm(
                manifest,
                known=self.resolved.model_unit_norm,
                canary=vector,
                full_width=self.job.model.dimensions is None,
                probe=full_vector_probe(self.provider, self.limits, self.job.limits.max_retries, self.watch),
                say=say,
            )
        return True

    # ----------------------------------------------------------------------------------- chunks

    def chunk_stream(self, sources, columns, retry_units: list[RetryUnit], units=None):
        """This run's chunks: previously failed rows first, then the units not yet committed (of ``units``,
        default the placement's)."""
        units = units if units is not None else self.units
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
                    self.output.view(),  # a --shard part: every part's units, as the split's plan says
                    columns,
                    self.job.output.shard_rows,
                    CHUNK_ROWS,
                    self.task.group_key,
                    pack_small_files=not self.job.is_rerank,  # the rerank task reads one file per chunk
                    wanted=units,  # a part reads only its own units' rows where it can
                    first_ordinal=first_ordinal(self.manifest),
                ),
                self.files,
            )
        )
        for stream in chunks:
            for chunk in stream:
                if units is None or units(chunk.unit):
                    yield chunk

    def tick(self) -> None:
        """Twice a second while the pipeline runs: the pace, the progress bar, the journal's fsyncs."""
        self.stats.pace = self.limits.describe()
        self.progress.refresh()
        self.journal.tick()

    # ------------------------------------------------------------------------------------- ending

    def _report(self, outstanding: int) -> dict[str, Any]:
        """The content of ``_report.json`` (with what the stages add)."""
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
            memory=memory_report(),
            **(self.task.vectors.report(self.manifest) if self.task.vectors is not None else {}),
            **self.stages.report(),
        )

    def _conclude(self) -> int:
        s = self.stats
        if self.stopping is not None:
            self.progress.line(
                f"stopped: {s.rows_done:,} rows done this run; committed shards are kept. "
                "Run the same command again to resume."
            )
            return stop_exit_code(self.stopping)
        verb = "scored" if self.job.is_rerank else "embedded"
        self.progress.line(self.progress.summary(verb, str(self.out)))
        for line in ending_lines(s, self.output.store.describe(TRUNCATED)):
            self.progress.line(line)
        if self._unresolved:
            self.progress.line(
                f"{self._unresolved:,} rows failed and are listed in "
                f"{self.output.store.describe(self.output.failed_name)}; run the same command again to retry them"
            )
            return EXIT_PARTIAL
        self.output.complete(self.progress.line)
        return EXIT_OK
