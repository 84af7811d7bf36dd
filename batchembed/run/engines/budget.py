"""One rate limit for a whole job spread over workers: a budget every worker reserves from.

:class:`JobBudget` is plain Python (tested without Ray); the Ray engine runs it as an actor and each
worker's :class:`SharedLimits` reserves one request and its tokens from it before sending. The
budget is a GCRA (virtual scheduling) pacer per limit: it holds one second's budget as burst and
spaces the rest at ``(limit - burst) / 60`` per second, so no 60-second window sees more than the
limit however many workers ask (the same arithmetic as the single-process buckets in
:mod:`batchembed.sending.limits`). What workers learn from the server lowers it for everyone: a pause
(Retry-After, a budget exhausted until its reset) holds every worker, and the limits a server
announces (any header style ``RateLimits.observe`` reads) become the job's, up to the configured ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from typing import Any

from batchembed.providers.ratelimit_headers import Announced
from batchembed.sending.limits import AdaptiveWindow, PacedLimit, RateLimits

#: The job-wide hold after a 429 that announced nothing (seconds), doubling up to the maximum.
THROTTLE_PAUSE = 0.25
THROTTLE_PAUSE_MAX = 8.0

#: The budget's epoch when the current request (this asyncio task's) was granted (``SharedLimits``).
_GRANTED_IN: contextvars.ContextVar[int | None] = contextvars.ContextVar("granted_in", default=None)


class _Pacer:
    """GCRA pacing of one per-minute limit."""

    def __init__(self, limit: int) -> None:
        self.tat = 0.0  # theoretical arrival time of the next unit of budget
        self.set_limit(limit)

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        burst = max(1, self.limit // 60)
        self.interval = 60.0 / (self.limit - burst) if self.limit > burst else 60.0 / self.limit
        self.tolerance = (burst - 1) * self.interval  # ``burst`` units may go at once

    def reserve(self, amount: int, now: float, not_before: float) -> float:
        """Reserve ``amount`` and return the time at which it may be spent."""
        amount = min(amount, self.limit)  # one request bigger than the limit goes alone
        start = max(self.tat, now, not_before)
        at = max(now, not_before, start - self.tolerance)
        self.tat = start + amount * self.interval
        return at


class JobBudget:
    """The job's requests/min and tokens/min, shared by every worker (run as a Ray actor)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, clock=time.monotonic) -> None:
        self.configured = (requests_per_minute, tokens_per_minute)
        self.requests = _Pacer(requests_per_minute)
        self.tokens = _Pacer(tokens_per_minute)
        self.paused_until = 0.0
        self.clock = clock
        self.granted = 0
        self.throttles = 0  # header-less 429s (and 503s) reported
        self.epoch = 0  # throttling events counted (each one decrease): a grant's epoch dates it
        self._streak = 0  # header-less 429s since the server last accepted a request
        # the job-wide rate a server that announces nothing allows, learned as one process learns it
        self.paces = (
            PacedLimit("requests", requests_per_minute, clock),
            PacedLimit("tokens", tokens_per_minute, clock),
        )

    def grant(self, requests: int, tokens: int, accepted: tuple[int, int] = (0, 0)) -> tuple[float, int]:
        """``reserve``, and the epoch the grant is made in (handed back with a 429 to ``throttled``)."""
        return self.reserve(requests, tokens, accepted), self.epoch

    def reserve(self, requests: int, tokens: int, accepted: tuple[int, int] = (0, 0)) -> float:
        """Reserve budget for ``requests`` requests of ``tokens`` tokens; seconds the caller must wait.

        ``accepted``: (requests, tokens) the server accepted from this worker since its last reservation."""
        if accepted[0]:
            self._streak = 0
            self.paces[0].accepted(accepted[0])
            self.paces[1].accepted(accepted[1])
            self._follow()
        now = self.clock()
        at = max(self.requests.reserve(requests, now, self.paused_until), self.tokens.reserve(tokens, now, 0.0))
        self.granted += requests
        return max(0.0, at - now)

    def pause(self, seconds: float) -> None:
        """The server asked for a pause (429 Retry-After, a budget spent until reset): hold every worker."""
        self.paused_until = max(self.paused_until, self.clock() + min(seconds, 120.0))

    def throttled(self, status: int, granted_in: int | None = None) -> None:
        """A worker got a 429 (or 503) that announced no limit: cut the job's rate (``PacedLimit.throttled``),
        and hold every worker for a moment, doubling while 429s go on with nothing accepted: what one
        process's senders do together when all of them back off, so N workers do not send N times the
        retries into a full window.

        ``granted_in``: the epoch the throttled request was granted in. Granted before the last event, it
        went out at the rate that event already cut: the same event, counted once (no second decrease, no
        longer hold), however many workers report it and however late their reports arrive."""
        self.throttles += 1
        if granted_in is not None and granted_in < self.epoch:
            return
        self.epoch += 1
        for pace in self.paces:
            pace.throttled(status)
        self._follow()
        self._streak += 1
        self.pause(min(THROTTLE_PAUSE_MAX, THROTTLE_PAUSE * 2 ** (self._streak - 1)))

    def _follow(self) -> None:
        """Pace the GCRA pacers at what the AIMD learned (only where the server announced nothing)."""
        for pace, pacer in zip(self.paces, (self.requests, self.tokens), strict=True):
            if pace.source == "adaptive" and max(1, int(pace.value)) != pacer.limit:
                pacer.set_limit(int(pace.value))

    def learn(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        """The server's own limits (``x-ratelimit-limit-*``): follow them, up to the configured ones."""
        if requests_per_minute:
            self.requests.set_limit(min(requests_per_minute, self.configured[0]))
            self.paces[0].learn(requests_per_minute)  # announced: no more probing
        if tokens_per_minute:
            self.tokens.set_limit(min(tokens_per_minute, self.configured[1]))
            self.paces[1].learn(tokens_per_minute)

    def limits(self) -> dict[str, Any]:
        """What the budget enforces now (for the report and tests)."""
        return {
            "requests_per_minute": self.requests.limit,
            "tokens_per_minute": self.tokens.limit,
            "granted": self.granted,
            "throttled": self.throttles,
            "throttle_events": self.epoch,
            "source": self.paces[0].source,
        }


class _SharedWindow(AdaptiveWindow):
    """The worker's own window (AIMD, or learned) whose pauses are also sent to the job's budget."""

    def __init__(self, maximum: int, budget: Any, learner: Any = None) -> None:
        super().__init__(maximum, learner=learner)
        self.budget = budget

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.budget.pause.remote(seconds)


class SharedLimits(RateLimits):
    """A worker's limits: its own concurrency window, the job's budget (an actor handle) for rates."""

    def __init__(
        self, budget: Any, concurrency: int | str, requests_per_minute: int, tokens_per_minute: int, ceiling: int = 64
    ) -> None:
        super().__init__(requests_per_minute, tokens_per_minute, concurrency, ceiling)
        self.budget = budget
        self.window = _SharedWindow(self.window.maximum, budget, self.window.learner)
        self._known: tuple[float | None, float | None] = (None, None)
        self._accepted = [0, 0]  # (requests, tokens) accepted since the last reservation, reported with the next

    async def admit(self, tokens: int) -> None:
        """Wait for the job-wide budget of one request of ``tokens`` (estimated, charged as the server counts)."""
        async with self._admitting:
            accepted, self._accepted = tuple(self._accepted), [0, 0]
            wait, epoch = await self.budget.grant.remote(1, self.charge(tokens), accepted)
            _GRANTED_IN.set(epoch)  # this request's (its task's): ``observe`` hands it back with a 429
            if wait > 0:
                await asyncio.sleep(wait)

    def observe(self, headers: Mapping[str, str], status: int | None, tokens: int) -> Announced:
        """Learn as a single process does (``RateLimits.observe``: every header style), and share it: a
        spent budget pauses every worker (through the window); announced limits become the job's."""
        found = super().observe(headers, status, tokens)
        stated = (found.requests_per_minute, found.tokens_per_minute)
        if status == 200:
            self._accepted[0] += 1
            self._accepted[1] += self.charge(tokens)
        elif status in (429, 503) and stated == (None, None):
            self.budget.throttled.remote(status, _GRANTED_IN.get())  # announces nothing: the job's rate backs off
        if any(v is not None for v in stated) and stated != self._known:
            self._known = stated
            self.budget.learn.remote(*(None if v is None else int(v) for v in stated))
        return found
