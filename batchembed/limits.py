"""Stay inside the provider's limits: requests/min, tokens/min, and an adaptive concurrency window.

* requests/min and tokens/min are aiolimiter leaky buckets; a request acquires 1 from the first and
  its token count from the second before it is sent.
* Concurrency is AIMD, like TCP congestion control and Beam's adaptive throttler: the window starts
  at ``limits.concurrency``, grows by one request per window's worth of successes (additive
  increase), halves on a 429 or 503 (multiplicative decrease, at most once per second so one burst
  of 429s counts once), and never exceeds the configured maximum.
* A server-requested delay (Retry-After, or ``x-ratelimit-remaining-*`` reaching 0 with a reset
  time) pauses *every* sender until it passes; after the pause the halved window ramps up again
  instead of stampeding.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress

from aiolimiter import AsyncLimiter


class AdaptiveWindow:
    """An AIMD concurrency limit with a shared pause; use ``async with window.slot():`` per request."""

    def __init__(self, maximum: int, clock=time.monotonic) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._paused_until = 0.0
        self._last_decrease = -1e9
        self._clock = clock
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
                wait = self._paused_until - self._clock()
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
                self._cond.notify_all()

    def on_success(self) -> None:
        """Additive increase: +1 slot per ``limit`` successes."""
        self.limit = min(self.maximum, self.limit + 1.0 / self.limit)

    def on_throttled(self, delay: float | None) -> None:
        """Multiplicative decrease (once per second at most) and a shared pause of ``delay`` seconds."""
        now = self._clock()
        if now - self._last_decrease >= 1.0:
            self.limit = max(1.0, self.limit / 2)
            self._last_decrease = now
        if delay:
            self.pause(delay)

    def pause(self, seconds: float) -> None:
        """Hold every new request for ``seconds`` (extends, never shortens, a pause in progress)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations ("6m0s", "12ms", "1.5s", or bare seconds) in seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def exhausted_for(headers: Mapping[str, str]) -> float | None:
    """Seconds until the server's budget refills, when a ``x-ratelimit-remaining-*`` header says 0."""
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is None or reset is None:
            continue
        try:
            if float(remaining) > 0:
                continue
        except ValueError:
            continue
        seconds = parse_duration(reset)
        if seconds is not None:
            waits.append(min(seconds, 120.0))
    return max(waits) if waits else None


class RateLimits:
    """requests/min and tokens/min buckets plus the adaptive window, acquired together per request."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, concurrency: int) -> None:
        self.requests = AsyncLimiter(requests_per_minute, 60)
        self.tokens = AsyncLimiter(tokens_per_minute, 60)
        self.tokens_per_minute = tokens_per_minute
        self.window = AdaptiveWindow(concurrency)

    async def admit(self, tokens: int) -> None:
        """Wait until one more request of ``tokens`` tokens fits the per-minute budgets."""
        await self.requests.acquire()
        # A batch bigger than the whole bucket could never be admitted: charge the bucket's size.
        await self.tokens.acquire(min(max(tokens, 1), self.tokens_per_minute))

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Pause everyone when the server says a budget is spent until its reset time."""
        wait = exhausted_for(headers)
        if wait:
            self.window.pause(wait)
