"""A server's latency in virtual time, for the in-process fake: ``FakeProvider.virtual = VirtualLatency(...)``.

Each request is answered ``latency(n)`` virtual seconds after it arrives, ``n`` being the requests the
fake holds at that moment (itself included): a fast server is a constant, a saturated one grows with
``n``. Nothing sleeps: the fake moves its ``VirtualClock`` itself, to the earliest answer due, and
answers what is due, as soon as the client has sent what it will send: when ``full(held)`` says so
(a test passes ``lambda held: held >= window.current``, the client's concurrency window), or else once no
new request has arrived for ``settle`` turns of the event loop. Whatever reads the same clock (a run's
concurrency window, through ``runner.limits.window.clock``) sees the latencies and the throughput the
model says, however loaded the machine running the test is.

Only for the in-process transport (one event loop for the client and the fake).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class VirtualClock:
    """Seconds that pass only when ``VirtualLatency`` moves them; call it for the time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class VirtualLatency:
    """Holds each request until the virtual clock reaches its time (see the module)."""

    def __init__(
        self,
        latency: Callable[[int], float],
        clock: VirtualClock | None = None,
        settle: int = 100,
        full: Callable[[int], bool] | None = None,
    ) -> None:
        self.latency = latency
        self.clock = clock or VirtualClock()
        self.settle = settle
        self.full = full
        self._due: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._quiet = 0
        self._ticking = False

    async def wait(self, in_flight: int) -> None:
        """Return once the clock reached this request's answer time."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        heapq.heappush(self._due, (self.clock.now + self.latency(in_flight), next(self._order), done))
        self._quiet = 0
        if self.full is not None and self.full(len(self._due)):
            self._answer_next()  # the client sent all it may: the next answer is due now
        elif not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick, loop)
        await done

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._due:
            self._ticking = False
            return
        self._quiet += 1
        if self._quiet >= self.settle:  # nothing new for a while: the next answer is due
            self._answer_next()
        loop.call_soon(self._tick, loop)

    def _answer_next(self) -> None:
        """Move the clock to the earliest answer due and answer every request due then."""
        self._quiet = 0
        at = self._due[0][0]
        self.clock.now = max(self.clock.now, at)
        while self._due and self._due[0][0] <= at:
            _, _, done = heapq.heappop(self._due)
            if not done.done():
                done.set_result(None)
