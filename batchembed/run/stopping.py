"""A run's stop, kept to its deadline: SIGTERM/SIGINT, or a server away for longer than the job waits.

The first signal stops reading and sending at once (``stages.stop()``, the sender's ``stopping``: no new
request goes out, no wait between tries goes on) and interrupts whatever waits on the server outside the
pipeline (the canary at once; a batch-tier round after the grace: ``interruptible``). Requests already
on the wire get at most the grace (``limits.stop_grace_seconds``, 30 s by default) to be answered (their
answers go to the journal) and are then cancelled (``stages.abandon()``; at once when none is on the
wire); their rows are sent again by the next run. Complete shards are committed, the resume line is
printed, and the process exits 130/143.

A sink's sync under way gets the grace too, and is then cancelled (its transaction rolls back; the next
run or ``batchembed sync`` brings the sink up). Whatever else the run is waiting for (a thread reading
input, Ray shutting down), a watchdog ends the process ``OVERDUE_AFTER`` seconds after the grace with the
same exit code: a scheduler that waits ``grace + 5`` s before SIGKILL always gets the exit it was
promised; what was committed is kept either way, as after a kill. A second signal exits at once.

An outage that outlasts ``limits.outage_seconds`` (``sending/outage``) stops the run the same way, with
``ExitCode.SERVER_UNREACHABLE`` (no watchdog: no one outside is waiting on a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from batchembed.exitcodes import ExitCode

#: ``runner.stopping`` when the server stayed away past ``limits.outage_seconds`` (not a signal number).
OUTAGE = -1
#: Seconds after the grace by which a process stopped by a signal exits, whatever it still waits for.
OVERDUE_AFTER = 3.5
#: How often the grace looks whether requests are still on the wire.
_LOOK_EVERY = 0.05

T = TypeVar("T")


class Stopped(Exception):
    """A wait on the server outside the pipeline (the canary, a batch round) was interrupted by the stop."""


def exit_code(reason: int) -> ExitCode:
    """The exit code of a run stopped for ``reason`` (a signal number or ``OUTAGE``)."""
    if reason == OUTAGE:
        return ExitCode.SERVER_UNREACHABLE
    return ExitCode.SIGINT if reason == signal.SIGINT else ExitCode.SIGTERM


class Stoppable(Protocol):
    """What the stop uses of the run (``runner.JobRunner``)."""

    stopping: int | None
    sender: Any
    stages: Any
    progress: Any
    stats: Any


class StopControl:
    """The stop of one run (see the module docstring); ``grace`` seconds for requests on the wire."""

    def __init__(self, run: Stoppable, grace: float) -> None:
        self.run = run
        self.grace = grace
        self._waits: set[asyncio.Future] = set()
        self._graced: set[asyncio.Future] = set()
        self._grace_task: asyncio.Task | None = None
        self._watchdog: threading.Timer | None = None

    def on_signal(self, sig: int) -> None:
        """SIGINT/SIGTERM (the event loop's handler): the first stops the run, a second exits at once."""
        run = self.run
        if run.stopping is not None:
            run.progress.close()
            print("batchembed: stopped at once; run the same command again to resume.", file=sys.stderr, flush=True)
            os._exit(exit_code(sig))
        self._arm_watchdog(exit_code(sig))
        if run.stages.on_signal(sig):  # the stages took the signal on their own terms (batches waited on)
            self._start_grace()
        else:
            self.stop(
                sig,
                f"{signal.Signals(sig).name}: finishing requests in flight (up to {self.grace:g}s), then stopping; "
                "press Ctrl-C again to stop at once",
            )
        self._interrupt()

    def outage(self, message: str) -> None:
        """The server stayed away past ``limits.outage_seconds``: stop like on SIGTERM, exit code 68."""
        if self.run.stopping is None:
            self.stop(OUTAGE, f"{message}: stopping as on SIGTERM; run the same command again once it answers")

    def stop(self, reason: int, line: str) -> None:
        """Stop reading and sending now; cancel what is still on the wire after the grace."""
        run = self.run
        run.stopping = reason
        if run.sender is not None:
            run.sender.stopping = True
        run.stages.stop()
        run.progress.line(line)
        self._interrupt()
        self._start_grace()

    async def interruptible(self, awaitable: Awaitable[T], *, graced: bool = False) -> T:
        """Await ``awaitable`` unless the run stops first: then it is cancelled and ``Stopped`` raised.

        ``graced``: a stop lets it go on for the grace (a batch-tier round: its remote calls are on the wire)
        and cancels it only then; otherwise it is cancelled at once (a wait that buys nothing)."""
        if self.run.stopping is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise Stopped()
        future = asyncio.ensure_future(awaitable)
        (self._graced if graced else self._waits).add(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled() and self.run.stopping is not None:
                raise Stopped() from None
            raise
        finally:
            self._waits.discard(future)
            self._graced.discard(future)
            if not future.done():
                future.cancel()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` between two tries (a back-off, a server away), or raise ``Stopped`` as soon as the
        run stops: nothing is on the wire, so nothing is owed the grace."""
        if self.run.stopping is None:
            future = asyncio.ensure_future(asyncio.sleep(seconds))
            self._waits.add(future)
            try:
                await future
            except asyncio.CancelledError:
                if self.run.stopping is None:  # cancelled for another reason: not ours to swallow
                    raise
            finally:
                self._waits.discard(future)
        if self.run.stopping is not None:
            raise Stopped()

    def disarm(self) -> None:
        """The run is over: no watchdog outlives it (a test runs many runs in one process)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _interrupt(self) -> None:
        for future in list(self._waits):
            future.cancel()

    def _start_grace(self) -> None:
        if self._grace_task is None:
            self._grace_task = asyncio.get_running_loop().create_task(self._abandon_after_grace())

    async def _abandon_after_grace(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        sinks = getattr(self.run, "sinks", None)
        while self._busy(sinks) and loop.time() < deadline:
            await asyncio.sleep(_LOOK_EVERY)
        for future in list(self._graced):
            future.cancel()
        self.run.stages.abandon()
        if sinks is not None and sinks.syncing:  # a sink's sync waiting on its database (a lock, a slow COPY)
            await asyncio.to_thread(sinks.cancel)

    def _busy(self, sinks: Any) -> bool:
        """Whether something the grace is for is still under way: requests on the wire, a graced wait, a sync."""
        return self.run.stats.in_flight > 0 or bool(self._graced) or (sinks is not None and sinks.syncing)

    def _arm_watchdog(self, code: int) -> None:
        if self._watchdog is not None:
            return
        self._watchdog = threading.Timer(self.grace + OVERDUE_AFTER, _overdue, (code, self.grace + OVERDUE_AFTER))
        self._watchdog.daemon = True
        self._watchdog.start()


def _overdue(code: int, seconds: float) -> None:
    """The watchdog: the stop took longer than its deadline; leave now (what was committed is kept)."""
    with contextlib.suppress(Exception):
        print(
            f"batchembed: still stopping {seconds:g}s after the signal; exiting now. Committed shards are kept: "
            "run the same command again to resume.",
            file=sys.stderr,
            flush=True,
        )
    os._exit(code)
