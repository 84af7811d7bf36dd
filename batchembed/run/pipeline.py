"""The stages of a run, as asyncio tasks: reader -> prepare -> N sending workers -> ordered writer.

    reader (thread)  ──chunks──►  task.prepare + journal.resume  ──requests──►  N workers (sender)
                                                                                     │
    output.commit ◄── output.unit (in unit order, one row group per piece) ◄─────────┘

Stages hand each other plain values; memory is bounded by a window of pieces (read but not yet
written, ``PieceWindow``: sized from the requests in flight now), so a slow provider pushes back on the
reader. A piece is done when its last request is settled (answered, dead-lettered or abandoned); the
writer takes pieces in reading order, so a unit's shard holds its rows in input order, and commits the
unit with its last piece. A unit with an abandoned piece (a stop) is not committed: the next run redoes
it. An input that cannot be read to its end (a bad record, a truncated compressed file) ends the reading
like a stop: what was read before it is still sent and its complete units committed, then the run fails
with that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from batchembed.errors import InputError
from batchembed.input.chunks import CHUNK_ROWS
from batchembed.input.units import Chunk, Unit
from batchembed.output.commit import JobOutput, UnitWriter
from batchembed.output.journal.writer import Journal
from batchembed.sending.sender import Sender, Stop
from batchembed.sending.server_checks import ServedModel
from batchembed.stats import Stats
from batchembed.tasks import Piece, Request, Task


class PieceWindow:
    """How many pieces may be read and not yet written: the rows of twice the requests the concurrency
    window lets fly now, plus two (the piece being written, the next), and at least four.

    It follows the window as ``concurrency = "auto"`` moves it, rather than its ceiling: sized for 64 in
    flight while it sent 8, the reader prepared 40k rows ahead at the start, on the cores the first
    answers needed, and held them (100k rows: 8% slower than a fixed 8, 455 MB against 385 MB)."""

    def __init__(self, rows_in_flight: Callable[[], int]) -> None:
        self.rows_in_flight = rows_in_flight
        self.held = 0
        self._freed = asyncio.Event()

    def allowed(self) -> int:
        """How many pieces the window holds now."""
        return max(4, -(-self.rows_in_flight() * 2 // CHUNK_ROWS) + 2)

    async def acquire(self) -> None:
        """Wait until the window has room for one more piece, and take it (the reader's, one at a time)."""
        while self.held >= self.allowed():
            self._freed.clear()
            await self._freed.wait()
        self.held += 1

    def release(self) -> None:
        """A piece is written (or dropped): its room is free."""
        self.held -= 1
        self._freed.set()


class Pipeline:
    """Runs one run's chunks through the task, the sender and the output; ``stop()`` ends it cleanly."""

    def __init__(
        self,
        task: Task,
        journal: Journal,
        sender: Sender,
        output: JobOutput,
        stats: Stats,
        *,
        tick: Callable[[], None],
        served: ServedModel,
        window: PieceWindow,
        workers: int,
    ) -> None:
        self.task = task
        self.journal = journal
        self.sender = sender
        self.output = output
        self.stats = stats
        self.tick = tick
        self.served = served
        self.n_workers = workers
        self.stopping = False
        self._slots = window
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self._pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        self._input_error: InputError | None = None

    async def run(self, chunks: Iterator[Chunk]) -> None:
        """Send and write every chunk of ``chunks`` (or until stopped); raise the first real failure."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(chunks))
                self._workers = [tg.create_task(self._worker()) for _ in range(self.n_workers)]
                writer = tg.create_task(self._writer())
                tg.create_task(self._ticker(writer))
        except BaseExceptionGroup as group:
            # Surface the first real failure (an AuthError, an InputError...), not the group.
            raise first_error(group) from None
        finally:
            self.stats.concurrency = self.sender.limits.window.summary()  # for the closing line
        if self._input_error is not None:
            raise self._input_error

    def stop(self) -> None:
        """Read no more chunks and start no more requests; requests in flight finish."""
        self.stopping = True
        self.sender.stopping = True

    def abandon(self) -> None:
        """Cancel the requests still in flight (the stop's grace is over); their units are not committed."""
        for task in list(self._workers):
            task.cancel()

    async def _reader(self, stream: Iterator[Chunk]) -> None:
        sentinel = object()
        try:
            while not self.stopping:
                await self._slots.acquire()
                try:
                    chunk = await asyncio.to_thread(next, stream, sentinel)
                except InputError as exc:  # the rows before it are finished and committed first
                    self._input_error = exc
                    self._slots.release()
                    break
                if chunk is sentinel or self.stopping:
                    self._slots.release()
                    break
                piece, requests = await asyncio.to_thread(self._prepare, chunk)
                piece.pending = piece.requests = len(requests)
                await self._pieces.put(piece)
                for request in requests:
                    self._requests.put_nowait(request)
                if piece.pending == 0:
                    self.stats.rows_answered += piece.rows  # nothing to send: its rows are answered now
                    piece.done.set()
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            await self._pieces.put(None)
            for _ in range(self.n_workers):
                await self._requests.put(None)

    def _prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """A chunk's piece and the requests still to send once its unit's journal is read (reader thread)."""
        piece, requests = self.task.prepare(chunk)
        return piece, self.journal.resume(piece, requests)

    async def _worker(self) -> None:
        while True:
            try:
                request = await self._requests.get()
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                continue  # cancelled by the stop grace timer while idle: keep draining
            if request is None:
                return
            piece = request.piece
            if self.stopping or piece.abandoned:
                piece.abandoned = True
            else:
                try:
                    await self.sender.send(request)
                except asyncio.CancelledError:
                    piece.abandoned = True
                    if not self.stopping:
                        raise
                except Stop:
                    piece.abandoned = True
            piece.pending -= 1
            self.stats.rows_answered += piece.rows / piece.requests  # progress between written pieces
            if piece.pending == 0:
                piece.done.set()

    async def _writer(self) -> None:
        """Write pieces in unit order; commit a unit when its last piece is written.

        A unit's commit (the end of its upload, its manifest entry) runs in the background while the
        next unit's pieces are written: at most one commit in flight, each awaited before the next
        starts, so units are committed in order, one at a time, as before; a failed commit stops the
        writer at its next unit. What counts is unchanged: a shard counts once the manifest records it."""
        unit_writer: UnitWriter | None = None
        broken: Unit | None = None  # a unit with an abandoned piece cannot be committed
        committing: asyncio.Future | None = None
        try:
            while (piece := await self._pieces.get()) is not None:
                await piece.done.wait()
                if committing is not None and committing.done():
                    await committing  # a failed commit (a lost lease...) stops the run at once
                    committing = None
                unit = piece.chunk.unit
                if piece.abandoned or broken is unit:
                    broken = unit
                    if unit_writer is not None:
                        unit_writer.abort()
                        unit_writer = None
                    self._slots.release()
                    continue
                if unit_writer is None:
                    served = {"served_model": self.served.served} if self.served.served else {}
                    unit_writer = self.output.unit(unit, {**self.task.metadata(), **served})
                # the piece is finished (nothing changes it any more): its tables are built and written off
                # the event loop, in one hop
                failed, cut = await asyncio.to_thread(self._write, piece, unit_writer)
                self._count(piece, failed, cut)
                self._slots.release()
                if piece.chunk.last:
                    if committing is not None:
                        await committing  # the unit before: committed (or its error raised) first
                    committing = asyncio.ensure_future(asyncio.to_thread(self._commit, unit_writer))
                    unit_writer = None
            if committing is not None:
                await committing
                committing = None
        finally:
            if unit_writer is not None:
                unit_writer.abort()
            if committing is not None:  # stopping on an error: let the commit in flight end either way
                await asyncio.wait({committing})
                if not committing.cancelled():
                    committing.exception()  # retrieved: the writer's own error is the one raised

    def _write(self, piece: Piece, unit_writer: UnitWriter) -> tuple[Any, Any]:
        """A finished piece's rows into its unit's shard (a worker thread); its failed and cut rows."""
        rows, failed, cut = self.task.tables(piece)
        unit_writer.write(rows, failed, cut)
        return failed, cut

    def _count(self, piece: Piece, failed: Any, cut: Any) -> None:
        """Add a written piece's rows to the stats."""
        n_failed = failed.num_rows if failed is not None else 0
        self.stats.rows_failed += n_failed
        self.stats.rows_skipped += piece.skipped
        self.stats.rows_embedded += piece.rows - n_failed - piece.skipped
        self.stats.rows_truncated += cut.num_rows if cut is not None else 0

    def _commit(self, unit_writer: UnitWriter) -> None:
        self.served.record(self.output.manifest)
        if self.task.vectors is not None:  # the lengths written into this unit, recorded with it
            self.task.vectors.record(self.output.manifest, unit_writer.unit.name)
        self.output.commit(unit_writer)
        self.journal.committed(unit_writer.unit.name)

    async def _ticker(self, writer: asyncio.Task) -> None:
        while not writer.done():
            self.tick()
            await asyncio.wait({writer}, timeout=0.5)


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


class Run(Protocol):
    """What the local stages use of the run they serve (``runner.JobRunner``)."""

    task: Task
    journal: Journal
    sender: Sender
    output: JobOutput
    stats: Stats
    served: ServedModel
    job: Any
    model: Any

    def tick(self) -> None: ...

    def chunk_stream(
        self, sources: list, columns: list[str], retry_units: list, units: Any = None
    ) -> Iterator[Chunk]: ...


class LocalStages:
    """The stages run in this process: the pipeline over the run's own chunks (a whole run, a part, a worker)."""

    def __init__(self, run: Run) -> None:
        self.run_ = run
        self.pipeline: Pipeline | None = None
        self.stopped = False

    async def run(self, sources: list, columns: list[str], retry_units: list, units: Any = None) -> None:
        """Send and commit the chunks of ``units`` (default: the run's own)."""
        run, job = self.run_, self.run_.job
        window = PieceWindow(lambda: run.sender.limits.window.current * run.model.batch_inputs)
        self.pipeline = Pipeline(
            run.task,
            run.journal,
            run.sender,
            run.output,
            run.stats,
            tick=run.tick,
            served=run.served,
            window=window,
            workers=job.limits.in_flight_max,
        )
        if self.stopped:  # a signal before the stages existed
            self.pipeline.stop()
        await self.pipeline.run(run.chunk_stream(sources, columns, retry_units, units))

    def stop(self) -> None:
        """Read no more chunks and start no more requests; requests in flight finish."""
        self.stopped = True
        if self.pipeline is not None:
            self.pipeline.stop()

    def abandon(self) -> None:
        """Cancel the requests still in flight (the stop's grace is over)."""
        if self.pipeline is not None:
            self.pipeline.abandon()

    def on_signal(self, sig: int) -> bool:
        """A signal is the runner's to handle: stop, then abandon after the grace."""
        return False

    def every_unit_done(self) -> bool:
        """The local stages reach every unit they are given."""
        return True

    def report(self) -> dict[str, Any]:
        """Nothing to add to the report."""
        return {}

    def conclude(self, conclude: Callable[[], int]) -> int:
        """The run's own ending, as it is."""
        return conclude()
