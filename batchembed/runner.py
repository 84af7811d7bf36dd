"""The asyncio pipeline: reader -> pieces -> request workers -> ordered writer -> manifest.

The only module that creates tasks. Stages hand each other plain values; memory is bounded by a
window of pieces (read but not yet written), so a slow provider pushes back on the reader.

    reader (thread)  ──chunks──►  prepare (texts, tokens, dedup, pack)  ──requests──►  N workers
                                                                                         │
    manifest ◄── commit shard ◄── writer (in unit order, one row group per piece) ◄──────┘
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pyarrow as pa

from batchembed import __version__
from batchembed.checkpoint import (
    FAILED,
    FAILED_DIR,
    REPORT,
    SUCCESS,
    TRUNCATED,
    Manifest,
    ShardRecord,
    failpoint,
    fingerprint_hash,
    open_output,
    remove_orphans,
)
from batchembed.config import JobConfig, ResolvedModel, resolve_model
from batchembed.errors import (
    InputError,
)
from batchembed.faults import with_path
from batchembed.inputcheck import check_inputs
from batchembed.journal import Journal, journal_store
from batchembed.limits import RateLimits
from batchembed.progress import Progress, Stats
from batchembed.sender import Sender, SendHooks, Stop
from batchembed.servers import ServedModel, UsageCheck, model_request_fingerprint, run_canary
from batchembed.sources import SourceFile, check_columns, discover
from batchembed.store import open_store, storage_options
from batchembed.tasks import Piece, Request, Task
from batchembed.tokens import TokenCounter
from batchembed.truncated import rebuild_truncated, write_truncated
from batchembed.units import Unit, iter_chunks, pending_rows, retry_chunks
from batchembed.writer import shard_metadata

#: Rows per chunk: the grain of text building, token counting and dedup.
CHUNK_ROWS = 4096
#: Seconds in-flight requests get to finish after SIGINT/SIGTERM before they are abandoned.
STOP_GRACE = 30.0

EXIT_OK, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM = 0, 3, 130, 143


class JobRunner:
    """Runs one job to completion (or to a clean stop). Use ``run()``; it returns an exit code.

    The engines in :mod:`batchembed.engines` subclass it to run part of a job (``--shard I/N``, a
    Ray worker's units) through the seams ``_acquire``, ``_open_manifest``, ``_chunk_stream``,
    ``_record``, ``_retry_unit_name`` and ``_complete``.
    """

    #: Install SIGINT/SIGTERM handlers (only possible in a process's main thread).
    handles_signals = True
    #: A finished run deletes every answer journal left (not a part of a job: other parts may be running).
    clears_journals = True
    #: Where this run's failed rows and report go (a ``--shard`` part writes its own).
    failed_name = FAILED
    report_name = REPORT

    def __init__(
        self,
        job: JobConfig,
        task: Task,
        provider: Any,
        counter: TokenCounter,
        *,
        stats: Stats,
        model_identity: dict[str, Any],
        quiet: bool = False,
        restart: bool = False,
        retry_failed: bool = True,
        accept_model_change: bool = False,
    ) -> None:
        self.job = job
        self.model: ResolvedModel = resolve_model(job)
        self.task = task
        self.provider = provider
        self.counter = counter
        self.model_identity = model_identity
        self.restart = restart
        self.retry_failed = retry_failed
        self.store = open_store(job)
        self.out = self.store.uri  # for messages
        self.stats = stats
        self.progress = Progress(self.stats, quiet=quiet)
        self.limits = RateLimits(self.model.requests_per_minute, self.model.tokens_per_minute, job.limits.concurrency)
        self.stopping: int | None = None  # the signal number once asked to stop
        self.manifest: Manifest | None = None
        self.journal: Journal | None = None
        self._unresolved = 0
        self.accept_model_change = accept_model_change
        self.usage_check = UsageCheck(self.progress.line, counter.name)
        self.served = ServedModel(self.model.name, self.progress.line)
        self.sender: Sender | None = None  # made once the engine's limits are in place

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
            await asyncio.to_thread(self.store.release)
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
        self.progress.line(
            f"{signal.Signals(sig).name}: finishing requests in flight (up to {STOP_GRACE:.0f}s), then stopping; "
            "press Ctrl-C again to stop at once"
        )
        asyncio.get_running_loop().call_later(STOP_GRACE, self._abandon_in_flight)

    def _abandon_in_flight(self) -> None:
        for task in list(self._workers):
            task.cancel()

    # ------------------------------------------------------------------------------------ setup

    def fingerprint(self, sources: list[SourceFile]) -> dict[str, Any]:
        """What the vectors depend on; a resume with a different fingerprint is refused."""
        return {
            **self.task.fingerprint(),
            "model.provider": self.model.provider,
            "model.name": self.model.name,
            "model.dimensions": self.job.model.dimensions,
            **model_request_fingerprint(self.job),
            **{f"model.{k}": v for k, v in self.model_identity.items()},
            "output.shard_rows": self.job.output.shard_rows,
            "files": [s.identity() for s in sources],
        }

    async def _run(self) -> int:
        sources = await asyncio.to_thread(discover, self.job.input.path, storage_options(self.job))
        columns = self.task.columns
        for src in sources:
            await asyncio.to_thread(check_columns, src, columns)
        await asyncio.to_thread(self._acquire)  # one writer per output: OutputLocked names the holder
        await asyncio.to_thread(check_inputs, self.job, sources, columns)
        self.manifest = manifest = await asyncio.to_thread(self._open_manifest, sources)
        if manifest.complete and self.store.exists(SUCCESS):
            self.progress.line(f"{self.out}: job already complete ({manifest.rows():,} rows); nothing to do")
            return EXIT_OK
        await self._check_server(manifest)
        self.stats.rows_resumed = manifest.rows()
        self.journal = Journal(
            journal_store(self.store),
            fingerprint_hash(manifest.fingerprint),
            self.task,
            self.stats,
            committed={s.name.removesuffix(".parquet") for s in manifest.shards},
        )
        retry_units = self._retry_plan(sources, manifest) if self.retry_failed else []
        todo = self._pending_rows(sources, manifest)
        if todo is not None:
            todo += sum(len(rows) for _, _, rows in retry_units)
        self.stats.rows_total = todo
        if manifest.shards:
            self.progress.line(
                f"resuming {self.out}: {len(manifest.shards)} shards ({manifest.rows():,} rows) already committed"
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
                await asyncio.to_thread(self._finish_files)
            except OSError:
                if not failed:  # a full disk fails the report too: keep the first, real, error
                    raise
        return self._conclude()

    def _acquire(self) -> None:
        """Take the output's one-writer lock (a ``--shard`` part takes its own)."""
        from batchembed.engines.parts import refuse_mixing

        self.store.acquire()
        if not self.restart:  # --restart discards a split output whole
            refuse_mixing(self.store, None)

    def _open_manifest(self, sources: list[SourceFile]) -> Manifest:
        """Load (or create) the manifest this run records its shards in."""
        return open_output(self.store, self.fingerprint(sources), self.restart)

    def _pending_rows(self, sources: list[SourceFile], manifest: Manifest) -> int | None:
        """Rows this run has still to do (None when unknown before reading)."""
        return pending_rows(sources, manifest)

    def _retry_unit_name(self, n: int) -> str:
        """Name of the shard holding this run's retried rows (``n`` retry shards exist already)."""
        return f"part-r{n:05d}.parquet"

    async def _check_server(self, manifest: Manifest) -> None:
        """The canary: teaches the limiter the server's limits and refuses a model swapped behind its name."""
        if await self._canary(manifest, self.accept_model_change, self.progress.line):
            await asyncio.to_thread(manifest.save, self.store)

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
        return True

    def _retry_plan(self, sources: list[SourceFile], manifest: Manifest):
        """Failed rows of earlier runs, grouped by file: [(failure_file, source, rows)]."""
        by_name = {s.name: s for s in sources}
        plan = []
        for failure_file in manifest.unresolved_failures():
            table = self.store.read_table(failure_file, columns=["file", "row"])
            files = table.column("file").to_pylist()
            rows = table.column("row").to_pylist()
            for name in dict.fromkeys(files):
                if name not in by_name:
                    raise InputError(f"{failure_file}: failed rows come from {name}, which is no longer an input")
                plan.append((failure_file, by_name[name], [r for f, r in zip(files, rows, strict=True) if f == name]))
        return plan

    # --------------------------------------------------------------------------------- pipeline

    async def _pipeline(self, sources, columns, retry_units) -> None:
        limits = self.job.limits
        window = max(4, -(-limits.concurrency * self.model.batch_inputs * 2 // CHUNK_ROWS) + 2)
        self._slots = asyncio.Semaphore(window)
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self._pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        n_workers = limits.concurrency
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(sources, columns, retry_units, n_workers))
                self._workers = [tg.create_task(self._worker()) for _ in range(n_workers)]
                writer = tg.create_task(self._writer())
                tg.create_task(self._ticker(writer))
        except BaseExceptionGroup as group:
            # Surface the first real failure (an AuthError, an InputError...), not the group.
            raise _first_error(group) from None

    def _chunk_stream(self, sources, columns, retry_units):
        """All chunks of this run: previously failed rows first, then the units not yet committed."""
        if retry_units:
            resolves = list(dict.fromkeys(f for f, _, _ in retry_units))
            n = sum(1 for s in self.manifest.shards if s.kind == "retry")
            unit = Unit(self._retry_unit_name(n), None, resolves=resolves)
            failures = [(src, rows) for _, src, rows in retry_units]
            yield from retry_chunks(failures, columns, unit, CHUNK_ROWS, self.task.group_key)
        yield from iter_chunks(
            sources,
            self.manifest,
            columns,
            self.job.output.shard_rows,
            CHUNK_ROWS,
            self.task.group_key,
            pack_small_files=not self.job.is_rerank,  # the rerank task reads one file per chunk
        )

    async def _reader(self, sources, columns, retry_units, n_workers: int) -> None:
        stream = self._chunk_stream(sources, columns, retry_units)
        sentinel = object()
        try:
            while self.stopping is None:
                await self._slots.acquire()
                chunk = await asyncio.to_thread(next, stream, sentinel)
                if chunk is sentinel or self.stopping is not None:
                    self._slots.release()
                    break
                piece, requests = await asyncio.to_thread(self.journal.prepare, chunk)
                requests = self.task.claim(piece, requests)
                self.journal.borrowed(piece)  # texts the memo answered since prepare
                piece.pending = len(requests) + piece.waits
                await self._pieces.put(piece)
                for request in requests:
                    self._requests.put_nowait(request)
                if piece.pending == 0:
                    self._piece_done(piece)
        finally:
            stream.close()
            await self._pieces.put(None)
            for _ in range(n_workers):
                await self._requests.put(None)

    # ------------------------------------------------------------------------------------ sending

    async def _worker(self) -> None:
        while True:
            try:
                request = await self._requests.get()
            except asyncio.CancelledError:
                if self.stopping is None:
                    raise
                continue  # cancelled by the stop grace timer while idle: keep draining
            if request is None:
                return
            piece = request.piece
            if self.stopping is not None or piece.abandoned:
                piece.abandoned = True
            else:
                try:
                    await self.sender.send(request)
                except asyncio.CancelledError:
                    piece.abandoned = True
                    if self.stopping is None:
                        raise
                except Stop:
                    piece.abandoned = True
            self._settle(piece)
            waiters = self.task.release(request)
            for waiter in waiters:
                self._settle(waiter)
            for waiter in {id(w): w for w in waiters}.values():
                self.journal.borrowed(waiter)

    def _settle(self, piece: Piece) -> None:
        """One request or wait of ``piece`` is over."""
        piece.pending -= 1
        if piece.pending == 0:
            self._piece_done(piece)

    def _piece_done(self, piece: Piece) -> None:
        if not piece.abandoned:
            failed = self.task.failed_rows(piece)
            self.stats.rows_failed += failed
            self.stats.rows_skipped += piece.skipped
            self.stats.rows_embedded += piece.rows - failed - piece.skipped
            self.journal.borrowed(piece)
        piece.done.set()

    # ------------------------------------------------------------------------------------ writing

    async def _writer(self) -> None:
        """Write pieces in unit order; commit a unit's shard when its last piece is written."""
        current: Unit | None = None
        shard: Any = None  # the store's shard writer
        failures: list[pa.Table] = []
        cuts: list[pa.Table] = []
        broken: Unit | None = None  # a unit with an abandoned piece cannot be committed
        try:
            while True:
                piece = await self._pieces.get()
                if piece is None:
                    break
                await piece.done.wait()
                unit = piece.chunk.unit
                if unit is not current:
                    current, failures, cuts = unit, [], []
                if piece.abandoned or broken is unit:
                    broken = unit
                    if shard is not None:
                        shard.abort()
                        shard = None
                    self._slots.release()
                    continue
                if shard is None:
                    await self.task.ready()
                table, failed = self.task.tables(piece)
                if shard is None:
                    served = {"served_model": self.served.served} if self.served.served else {}
                    schema = table.schema.with_metadata(shard_metadata({**self.task.metadata(), **served}))
                    shard = await asyncio.to_thread(
                        self.store.shard_writer, unit.name, schema, self.job.output.compression
                    )
                await asyncio.to_thread(shard.write, table)
                if failed is not None:
                    failures.append(failed)
                cut = self.task.truncated_rows(piece)
                if cut is not None:
                    cuts.append(cut)
                    self.stats.rows_truncated += cut.num_rows
                self._slots.release()
                if piece.chunk.last:
                    await asyncio.to_thread(self._commit, unit, shard, failures, cuts)
                    shard, current, failures, cuts = None, None, [], []
        finally:
            if shard is not None:
                shard.abort()

    def _commit(self, unit: Unit, shard: Any, failures: list[pa.Table], cuts: list[pa.Table]) -> None:
        """Make a unit durable: shard, its failed and cut rows, then the manifest entry (the commit point)."""
        written = shard.commit()
        n_cut = write_truncated(self.store, unit.name, cuts)
        failpoint("shard-before-manifest")
        failed_file = None
        n_failed = 0
        if failures:
            table = pa.concat_tables(failures)
            n_failed = table.num_rows
            failed_file = f"{FAILED_DIR}/{unit.name}"
            self.store.write_table(failed_file, table)
        record = ShardRecord(
            name=unit.name,
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
        )
        self.served.record(self.manifest)
        self._record(record, list(unit.resolves))
        self.journal.committed(unit.name)

    def _record(self, record: ShardRecord, resolves: list[str]) -> None:
        """The commit point: record a written shard in the manifest (a Ray worker hands it back instead)."""
        self.manifest.commit(self.store, record, resolves)

    # ------------------------------------------------------------------------------------- ending

    async def _ticker(self, writer: asyncio.Task) -> None:
        while not writer.done():
            self.stats.pace = self.limits.describe()
            self.progress.refresh()
            self.journal.tick()
            await asyncio.wait({writer}, timeout=0.5)

    def _finish_files(self) -> None:
        """Rebuild _failed.parquet from the unresolved failure files and write _report.json."""
        if self.manifest is None:
            return
        unresolved = self.manifest.unresolved_failures()
        self._unresolved = self.manifest.unresolved_rows(self.store)
        if unresolved:
            tables = (self.store.read_table(f) for f in unresolved)
            self.store.write_table(self.failed_name, pa.concat_tables(tables))
        elif self.store.exists(self.failed_name):
            self.store.delete(self.failed_name)
        rebuild_truncated(self.store, self.manifest)
        report = self.stats.report(
            limits=self.limits.report(),
            served_model=self.served.served,
            usage_ratio=round(self.usage_check.ratio, 3) if self.usage_check.ratio else None,
            version=__version__,
            model=self.model.name,
            provider=self.model.provider,
            dimensions=self.task.metadata().get("dimensions"),
            output=str(self.out),
            failed_rows_outstanding=self._unresolved,
        )
        self.store.write_bytes(self.report_name, json.dumps(report, indent=2).encode())

    def _conclude(self) -> int:
        s = self.stats
        if self.stopping is not None:
            self.progress.line(
                f"stopped: {s.rows_done:,} rows done this run; committed shards are kept. "
                "Run the same command again to resume."
            )
            return EXIT_SIGINT if self.stopping == signal.SIGINT else EXIT_SIGTERM
        verb = "scored" if self.job.is_rerank else "embedded"
        summary = (
            f"done: {s.rows_embedded:,} rows {verb}, {s.rows_skipped:,} skipped, {s.rows_failed:,} failed, "
            f"{s.rows_truncated:,} truncated, {s.tokens:,} tokens, {s.requests:,} requests in {s.elapsed:.1f}s "
            f"-> {self.out}"
        )
        self.progress.line(summary)
        if s.rows_recovered or s.rows_resent:
            self.progress.line(
                f"after the interrupted run: {s.rows_recovered:,} rows recovered from its journal, "
                f"{s.rows_resent:,} rows sent again (their answers were still in flight when it stopped)"
            )
        if s.rows_truncated:
            self.progress.line(
                f"{s.rows_truncated:,} rows were cut to fit; they are listed in {self.store.describe(TRUNCATED)}"
            )
        if self._unresolved:
            self.progress.line(
                f"{self._unresolved:,} rows failed and are listed in {self.store.describe(self.failed_name)}; "
                "run the same command again to retry them"
            )
            return EXIT_PARTIAL
        self._complete()
        return EXIT_OK

    def _complete(self) -> None:
        """Every unit is committed: mark the manifest complete, drop what it does not record, write _SUCCESS."""
        self.manifest.complete = True
        self.manifest.save(self.store)
        remove_orphans(self.store, self.manifest)  # nothing but recorded files once _SUCCESS is there
        self.store.write_bytes(SUCCESS, b"")


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group
