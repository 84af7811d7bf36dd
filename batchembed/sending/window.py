"""The concurrency window: how many requests may be in flight now, and a pause every sender shares.

``async with window.slot():`` holds one of ``current`` slots for a request (and waits out a pause a
server asked for). A fixed ``limits.concurrency`` is AIMD below that number (+1 slot per window's
worth of successes, halved by a 429 or 503 at most once a second); ``concurrency = "auto"`` gives the
window a ``ConcurrencyLearner`` (``sending.concurrency``) that sets it from each answer's latency, up
to ``max_concurrency``, 429s and 503s halving it all the same. ``report`` says which was used and why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from batchembed.job.config import AUTO_START
from batchembed.sending.concurrency import ConcurrencyLearner


class AdaptiveWindow:
    """An AIMD concurrency limit with a shared pause; use ``async with window.slot():`` per request.

    With a ``learner`` (``concurrency.ConcurrencyLearner``) the window is what it learns from each
    answer's latency (``on_success``) instead of the additive increase."""

    def __init__(self, maximum: int, clock=time.monotonic, learner: ConcurrencyLearner | None = None) -> None:
        self.maximum = maximum
        self.learner = learner
        self.limit = float(learner.limit if learner is not None else maximum)
        self.lowest = self.current
        self.throttles = 0
        self.in_flight = 0
        self._paused_until = 0.0
        self._last_decrease = -1e9
        self.clock = clock  # what the window and the latencies it learns from are measured with (tests set their own)
        self._cond = asyncio.Condition()

    @property
    def current(self) -> int:
        """How many requests may be in flight right now."""
        return max(1, int(self.limit))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a free slot (and for any pause to end), hold it for one request."""
        async with self._cond:
            while True:
                wait = self._paused_until - self.clock()
                if wait > 0:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), timeout=wait)
                    continue
                if self.in_flight < self.current:
                    break
                await self._cond.wait()
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._cond:
                self.in_flight -= 1
                # wake only those who can go now: idle senders beyond the window stay asleep
                self._cond.notify(max(1, self.current - self.in_flight))

    def on_success(self, latency: float | None = None) -> None:
        """A request answered ``latency`` seconds after it went out: the learner's, else additive increase
        (+1 slot per ``limit`` successes)."""
        if self.learner is None:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
        elif latency is not None and self.learner.completed(latency, self.clock()):
            self.limit = float(self.learner.limit)
            self.lowest = min(self.lowest, self.current)

    def on_throttled(self, delay: float | None) -> None:
        """Multiplicative decrease (once per second at most) and a shared pause of ``delay`` seconds."""
        now = self.clock()
        if now - self._last_decrease >= 1.0:
            self.limit = max(1.0, self.limit / 2)
            self._last_decrease = now
            self.throttles += 1
            self.lowest = min(self.lowest, self.current)
            if self.learner is not None:
                self.learner.throttled(self.current)
        if delay:
            self.pause(delay)

    def report(self) -> dict:
        """Which concurrency was used and why, for ``_report.json`` (``limits.concurrency``)."""
        halved = f"; halved {self.throttles}x by 429/503 answers (lowest {self.lowest})" if self.throttles else ""
        if self.learner is None:
            return {
                "mode": "fixed",
                "configured": self.maximum,
                "final": self.current,
                "why": f"limits.concurrency = {self.maximum}{halved}",
            }
        learner = self.learner
        return {
            "mode": "auto",
            "start": learner.start,
            "max_concurrency": learner.ceiling,
            "final": self.current,
            "highest": learner.highest,
            "why": learner.reason + halved,
            "changes": [{"to": limit, "why": why} for limit, why in learner.changes[-12:]],
        }

    def summary(self) -> str:
        """A few words for the run's closing line: "32 in flight (auto)"."""
        return f"{self.current} in flight ({'auto' if self.learner is not None else 'fixed'})"

    def pause(self, seconds: float) -> None:
        """Hold every new request for ``seconds`` (extends, never shortens, a pause in progress)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)


def concurrency_window(concurrency: int | str, ceiling: int, clock=time.monotonic) -> AdaptiveWindow:
    """The window for ``limits.concurrency``: a fixed number (AIMD below it), or ``"auto"``: learned from
    ``AUTO_START`` up to ``ceiling`` (``limits.max_concurrency``), never below ``AUTO_START`` unless the
    server throttles."""
    if concurrency == "auto":
        return AdaptiveWindow(ceiling, clock, ConcurrencyLearner(AUTO_START, ceiling, floor=AUTO_START))
    return AdaptiveWindow(int(concurrency), clock)
