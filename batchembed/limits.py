"""Stay inside the provider's limits: requests/min, tokens/min, and an adaptive concurrency window.

* requests/min and tokens/min are aiolimiter leaky buckets; a request acquires 1 from the first and
  its token count from the second before it is sent. Each bucket holds one second of budget
  (C = limit/60) and leaks at (limit - C)/60 per second, so no 60-second window — the way providers
  count — can ever see more than the limit, even at start-up, while the steady rate stays within
  2% of it. (A bucket holding a whole minute, aiolimiter's obvious setup, lets a full minute's
  budget out at once and then keeps going: the provider answers 429 for most of the next minute.)
  A request bigger than the bucket is charged in bucket-sized parts; requests are admitted one at
  a time, so their parts never interleave (interleaved, several requests finish charging together
  and go out in one burst), and a log of the last minute's charges holds back a request that would
  still push any 60-second window over the limit.
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
from collections import deque
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


def per_minute_bucket(limit: int) -> AsyncLimiter:
    """A leaky bucket that never lets more than ``limit`` through in any 60-second window."""
    capacity = max(1, limit // 60)
    if limit <= capacity:  # a limit under 2/minute: one at a time, spaced to fit the minute
        return AsyncLimiter(1, 60 / max(limit, 1))
    rate = (limit - capacity) / 60.0  # per second
    return AsyncLimiter(capacity, capacity / rate)


class MinuteLog:
    """What was charged in the last 60 seconds, to hold back a request that would overfill it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def wait_for(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` more fits in the trailing minute (0 if it fits now)."""
        while self._events and self._events[0][0] <= now - 60.0:
            self._total -= self._events.popleft()[1]
        excess = self._total + amount - self.limit
        if excess <= 0 or not self._events:
            return 0.0
        for when, charged in self._events:
            excess -= charged
            if excess <= 0:
                return when + 60.0 - now
        return self._events[-1][0] + 60.0 - now

    def add(self, amount: int, now: float) -> None:
        """Record a charge."""
        self._events.append((now, amount))
        self._total += amount


class RateLimits:
    """requests/min and tokens/min buckets plus the adaptive window, acquired together per request."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, concurrency: int) -> None:
        self.requests = per_minute_bucket(requests_per_minute)
        self.tokens = per_minute_bucket(tokens_per_minute)
        self.window = AdaptiveWindow(concurrency)
        self.minute = MinuteLog(tokens_per_minute)
        self._admitting = asyncio.Lock()
        # what the server counts per token we estimate, over the last requests (from usage.prompt_tokens)
        self._ratios: deque[float] = deque(maxlen=16)

    @property
    def charge_ratio(self) -> float:
        """Server tokens per estimated token: the highest of the recent ratios (1 until one is known).

        The highest, not an average: the estimate recalibrates itself as the job runs, so an
        average lags behind exactly when the estimate drops, and then undercharges the bucket.
        """
        return max(self._ratios) if self._ratios else 1.0

    def observe_usage(self, estimated: int, reported: int) -> None:
        """Learn how the server's token counts compare with ours, so the bucket is charged its count."""
        if estimated > 0 and reported > 0:
            self._ratios.append(min(max(reported / estimated, 0.2), 2.0))

    async def admit(self, tokens: int) -> None:
        """Wait until one more request of ``tokens`` (estimated) tokens fits the per-minute budgets."""
        loop = asyncio.get_running_loop()
        async with self._admitting:
            await self.requests.acquire()
            charge = max(int(tokens * self.charge_ratio * 1.02), 1)  # 2% margin over the learned ratio
            remaining = charge
            while remaining > 0:
                part = min(remaining, self.tokens.max_rate)
                await self.tokens.acquire(part)
                remaining -= part
            charge = min(charge, self.minute.limit)  # one request bigger than the limit goes alone
            while (wait := self.minute.wait_for(charge, loop.time())) > 0:
                await asyncio.sleep(wait)
            self.minute.add(charge, loop.time())

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Pause everyone when the server says a budget is spent until its reset time."""
        wait = exhausted_for(headers)
        if wait:
            self.window.pause(wait)
