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
* Concurrency is AIMD, like TCP congestion control and Beam's adaptive throttler: a fixed
  ``limits.concurrency`` is where the window starts; it grows back by one request per window's
  worth of successes (additive increase), halves on a 429 or 503 (multiplicative decrease, at most
  once per second so one burst of 429s counts once), and never exceeds the configured number. With
  ``concurrency = "auto"`` the window is learned from the answers instead (``concurrency``: more in
  flight while throughput rises, fewer when latency climbs with nothing gained), up to
  ``max_concurrency``; 429s and 503s still halve it.
* A server-requested delay (Retry-After, or ``x-ratelimit-remaining-*`` reaching 0 with a reset
  time) pauses *every* sender until it passes; after the pause the halved window ramps up again
  instead of stampeding.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping

from aiolimiter import AsyncLimiter

from batchembed.human import per_minute
from batchembed.providers.ratelimit_headers import Announced, parse_duration, parse_rate_headers
from batchembed.sending.window import AdaptiveWindow, concurrency_window

__all__ = [
    "AdaptiveWindow",
    "MinuteLog",
    "PacedLimit",
    "RateLimits",
    "concurrency_window",
    "exhausted_for",
    "parse_duration",
]


def exhausted_for(headers: Mapping[str, str]) -> float | None:
    """Seconds until the server's budget refills, when a ``remaining`` header (any style) says 0."""
    return parse_rate_headers(headers, time.time()).wait


def per_minute_bucket(limit: int) -> AsyncLimiter:
    """A leaky bucket that never lets more than ``limit`` through in any 60-second window."""
    return window_bucket(limit, 60.0)


def window_bucket(quota: int, window: float) -> AsyncLimiter:
    """A leaky bucket that never lets more than ``quota`` through in any ``window`` seconds.

    It holds 1/max(window, 10) of the quota (one second of budget for a minute's quota; a tenth of it
    for short windows, such as a gateway's ``10;w=1``) and leaks the rest evenly over the window, so
    the steady rate stays within 2% (windows of a minute) to 10% (short windows) of the quota.
    """
    capacity = max(1, int(quota // max(window, 10.0)))
    if quota <= capacity:  # a quota under 2 per window: one at a time, spaced to fit the window
        return AsyncLimiter(1, window / max(quota, 1))
    rate = (quota - capacity) / window  # per second
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


#: Share of an adaptive (Fireworks) limit to run at: just under it, so it keeps growing without
#: over-limit answers (their limit is measured over shorter windows than a minute).
ADAPTIVE_SHARE = 0.95
#: No announced limit: on a 429 the pace drops to this share of the rate the server accepted...
AIMD_DECREASE = 0.95
#: ...and then grows by this share of each accepted charge (about +2% per minute at the limit).
AIMD_INCREASE = 0.02
#: The bucket is rebuilt when the pace moved this much since it was built.
REBUILD_AT = 0.049
#: At most one decrease per this many seconds (a burst of 429s is one signal).
DECREASE_EVERY = 5.0


class PacedLimit:
    """One per-minute budget (requests or tokens) the sender paces itself to.

    Its value is min(configured, announced by the server) as soon as a response announces a limit
    ("server"); a server that announces nothing is probed with AIMD on the *sending rate*
    ("adaptive"): a 429 cuts the pace to a little under the rate the server was accepting, and
    every accepted request adds a little back, so the pace settles just under the real limit
    instead of bouncing off it. The pace is enforced by a leaky bucket and a trailing-minute log.
    """

    def __init__(self, name: str, configured: int, clock=time.monotonic) -> None:
        self.name = name
        self.configured = configured
        self.value = float(configured)
        self.source = "configured"
        self.announced: float | None = None
        self.window = 60.0  # seconds of the quota the bucket enforces
        self.bucket = per_minute_bucket(configured)
        self._bucket_value = float(configured)  # the pace the bucket was built for
        self.minute = MinuteLog(configured)
        self._clock = clock
        self._accepted: deque[tuple[float, float]] = deque()
        self._accepted_total = 0.0
        self._last_cut = -1e9

    def set(self, value: float, source: str, window: float | None = None) -> None:
        """Pace to ``value`` per minute (never above the configured limit), in quotas of ``window`` seconds."""
        value = max(1.0, min(float(self.configured), value))
        if value >= self.configured and source == "server" and (self.announced or 0) > self.configured:
            source = "configured"  # the server allows more than the job asked for
        window = self.window if window is None or value >= self.configured else min(window, 60.0)
        # A new bucket starts empty (one extra second of budget): rebuild only for a real change (5%);
        # the trailing-minute log follows every change exactly.
        if abs(value - self._bucket_value) >= REBUILD_AT * self._bucket_value or window != self.window:
            self.bucket = window_bucket(int(value * window / 60.0), window)
            self.window = window
            self._bucket_value = value
        self.value = value
        self.minute.limit = max(1, int(value))
        self.source = source

    async def acquire(self, amount: int) -> None:
        """Wait until ``amount`` fits the bucket and the trailing minute, then charge it."""
        loop = asyncio.get_running_loop()
        remaining = amount
        while remaining > 0:
            bucket = self.bucket
            part = min(remaining, bucket.max_rate)
            await bucket.acquire(part)
            remaining -= part
        while (wait := self.minute.wait_for(min(amount, self.minute.limit), loop.time())) > 0:
            await asyncio.sleep(wait)
        self.minute.add(min(amount, self.minute.limit), loop.time())

    def learn(self, announced: float, window: float = 60.0) -> None:
        """The server announced its limit per minute (already scaled to what we should use of it),
        counted over quotas of ``window`` seconds."""
        self.announced = announced
        self.set(announced, "server", window)

    def accepted(self, amount: float) -> None:
        """A request charged ``amount`` was answered; in adaptive mode, grow a little."""
        now = self._clock()
        self._accepted.append((now, amount))
        self._accepted_total += amount
        while self._accepted and self._accepted[0][0] <= now - 60.0:
            self._accepted_total -= self._accepted.popleft()[1]
        if self.source == "adaptive":
            self.set(self.value + AIMD_INCREASE * amount, "adaptive")

    def accepted_last_minute(self) -> float:
        """What the server accepted over the last 60 s: what its own trailing window holds."""
        now = self._clock()
        while self._accepted and self._accepted[0][0] <= now - 60.0:
            self._accepted_total -= self._accepted.popleft()[1]
        return self._accepted_total

    def throttled(self, status: int | None) -> None:
        """A 429 (or 503) without an announced limit: multiplicative decrease of the pace.

        A 429 cuts the pace to a little under what the server accepted over the last minute — the
        server's own window is full at that moment, so that is its limit — unless we sent too little
        for that to say anything (then the pace halves); a 503 is load shedding, not a limit, and only
        trims the pace by 10%.
        """
        if self.announced is not None:
            return
        now = self._clock()
        if now - self._last_cut < DECREASE_EVERY:
            return
        self._last_cut = now
        accepted = self.accepted_last_minute()
        if status != 429:
            target = self.value * 0.9
        elif accepted >= 0.25 * self.value:
            target = AIMD_DECREASE * accepted
        else:
            target = self.value / 2
        self.set(min(self.value, target), "adaptive")

    def describe(self) -> str:
        """The pace and where it comes from, in human units: "600k tokens/min (server)"."""
        return f"{per_minute(self.value, self.name)} ({self.source})"


class RateLimits:
    """requests/min and tokens/min paces plus the adaptive window, acquired together per request.

    Every response (200 or not) is fed to :meth:`observe`: announced limits (any header style, see
    ``ratelimit_headers``) set the pace; a spent budget pauses every sender until its reset; without
    announcements, 429s drive AIMD on the sending rate.
    """

    def __init__(
        self, requests_per_minute: int, tokens_per_minute: int, concurrency: int | str, ceiling: int = 64
    ) -> None:
        self.requests = PacedLimit("requests", requests_per_minute)
        self.tokens = PacedLimit("tokens", tokens_per_minute)
        self.window = concurrency_window(concurrency, ceiling)
        self._admitting = asyncio.Lock()
        # what the server counts per token we estimate, over the last requests (from usage.prompt_tokens)
        self._ratios: deque[float] = deque(maxlen=16)
        self.style: str | None = None  # the header style the server uses, once seen
        self.over_limit = 0  # responses a Fireworks-style server marked over its adaptive limit
        self._adaptive_share = ADAPTIVE_SHARE
        self._last_trim = -1e9

    @property
    def charge_ratio(self) -> float:
        """Server tokens per estimated token: the highest of the recent ratios (1 until one is known).

        The highest, not an average: a server that counts more than we do must never be undercharged.
        """
        return max(self._ratios) if self._ratios else 1.0

    def observe_usage(self, estimated: int, reported: int) -> None:
        """Learn how the server's token counts compare with ours, so the pace is charged its count."""
        if estimated > 0 and reported > 0:
            self._ratios.append(min(max(reported / estimated, 0.1), 10.0))

    def charge(self, tokens: int) -> int:
        """What a request of ``tokens`` (estimated) costs against the server's tokens/min."""
        return max(int(tokens * self.charge_ratio * 1.02), 1)  # 2% margin over the learned ratio

    async def admit(self, tokens: int) -> None:
        """Wait until one more request of ``tokens`` (estimated) tokens fits the per-minute paces."""
        async with self._admitting:  # one at a time: charges never interleave into bursts
            await self.requests.acquire(1)
            await self.tokens.acquire(self.charge(tokens))

    def observe(self, headers: Mapping[str, str], status: int | None, tokens: int) -> Announced:
        """Learn from one response: its announced limits, a spent budget, a 429/503 or a success."""
        found = parse_rate_headers(headers, time.time())
        if found.style:
            self.style = found.style
        if found.over_limit:
            self.over_limit += 1
            now = time.monotonic()
            if now - self._last_trim >= DECREASE_EVERY:  # still over at our share: run a little lower
                self._last_trim = now
                self._adaptive_share = max(0.6, self._adaptive_share * 0.95)
        elif found.adaptive and status == 200:
            self._adaptive_share = min(ADAPTIVE_SHARE, self._adaptive_share + 0.0005)  # ~+5% per 100 answers
        share = self._adaptive_share if found.adaptive else 1.0
        if found.requests_per_minute is not None:
            self.requests.learn(found.requests_per_minute * share, found.requests_window)
        if found.tokens_per_minute is not None:
            self.tokens.learn(found.tokens_per_minute * share, found.tokens_window)
        if found.wait:
            self.window.pause(found.wait)
        if status == 200:
            self.requests.accepted(1)
            self.tokens.accepted(self.charge(tokens))
        elif status in (429, 503):
            self.requests.throttled(status)
            self.tokens.throttled(status)
        return found

    def describe(self) -> str:
        """The paces for the progress line: "600k tokens/min (server), 600 requests/min (configured)"."""
        return f"{self.tokens.describe()}, {self.requests.describe()}"

    def report(self) -> dict:
        """The paces and the concurrency for ``_report.json``."""
        return {
            "concurrency": self.window.report(),
            "tokens_per_minute": round(self.tokens.value),
            "tokens_per_minute_source": self.tokens.source,
            "requests_per_minute": round(self.requests.value),
            "requests_per_minute_source": self.requests.source,
            "configured": {
                "tokens_per_minute": self.tokens.configured,
                "requests_per_minute": self.requests.configured,
            },
            "header_style": self.style,
            "over_limit_responses": self.over_limit,
        }
