"""The fake server's rate limits: requests and tokens per sliding window, announced in one header style.

Not thread-safe on its own: the server calls it under its lock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from batchembed.testing.answers import Reply, fmt_duration, styled_headers


class RateWindow:
    """``rpm`` requests and ``tpm`` tokens per sliding ``window`` seconds (None: no limit), timed by
    ``clock`` (seconds; a test may pass its own to move time on without waiting)."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        style: str = "openai",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.rpm = rpm
        self.tpm = tpm
        self.window = float(window)
        self.style = style
        self._log: deque[tuple[float, int]] = deque()

    @property
    def active(self) -> bool:
        """Whether any limit is set (only then are limits announced)."""
        return self.rpm is not None or self.tpm is not None

    def _prune(self, now: float) -> None:
        log_ = self._log
        while log_ and log_[0][0] <= now - self.window:
            log_.popleft()

    def admit(self, tokens: int) -> dict[str, str]:
        """Count one request of ``tokens`` against the limits and return the headers announcing them,
        or raise a 429 ``Reply`` (with ``Retry-After``) when it does not fit; refused requests do not count."""
        rpm, tpm = self.rpm, self.tpm
        if rpm is None and tpm is None:
            return {}
        now = self.clock()
        self._prune(now)
        log_ = self._log
        wait = 0.0
        reason = None
        if rpm is not None and len(log_) + 1 > rpm:
            # the entry whose expiry makes room for one more request
            idx = len(log_) - rpm
            wait = max(wait, log_[idx][0] + self.window - now) if idx >= 0 else self.window
            reason = f"requests per {self.window:g}s: limit {rpm}"
        if tpm is not None:
            used = sum(t for _, t in log_)
            if tokens > tpm:
                wait = max(wait, self.window)
                reason = f"tokens per {self.window:g}s: limit {tpm}, requested {tokens}"
            elif used + tokens > tpm:
                freed = 0
                for ts, t in log_:
                    freed += t
                    if used - freed + tokens <= tpm:
                        wait = max(wait, ts + self.window - now)
                        break
                reason = f"tokens per {self.window:g}s: limit {tpm}, used {used}, requested {tokens}"
        if reason is None:
            log_.append((now, tokens))
            return self._headers(now)
        headers = self._headers(now)
        if self.style != "bare":  # "bare": a 429 with no header at all, not even Retry-After
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        limit = "tokens" if reason.startswith("tokens") else "requests"
        message = f"Rate limit reached for {reason}. Please try again later."
        raise Reply(429, message, "rate_limit_exceeded", headers, limit=limit)

    def headers(self) -> dict[str, str]:
        """The headers announcing the limits now (empty while no limit is set)."""
        if not self.active:
            return {}
        now = self.clock()
        self._prune(now)
        return self._headers(now)

    def _headers(self, now: float) -> dict[str, str]:
        log_ = self._log
        used = sum(t for _, t in log_)
        reset = (log_[0][0] + self.window - now) if log_ else 0.0
        if self.style != "openai":
            return styled_headers(self.style, self.tpm, used, reset, self.window, self.rpm, len(log_))
        headers: dict[str, str] = {}
        if self.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(log_)))
            headers["x-ratelimit-reset-requests"] = fmt_duration(reset)
        if self.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - used))
            headers["x-ratelimit-reset-tokens"] = fmt_duration(reset)
        return headers


class AdaptiveLimit:
    """A Fireworks-style adaptive prompt-token limit measured over a short trailing window: it starts at
    ``start_tpm`` and doubles (up to ``cap_tpm``) after every ``period`` seconds during which the last
    ``window`` seconds used >= 70% of it; over the limit is served but marked, 1.5x over is refused."""

    GROW_AT = 0.7  # share of the limit used, sustained, that makes it grow
    REFUSE_AT = 1.5  # this far over the limit a request is refused (429)

    def __init__(self, start_tpm: int, cap_tpm: int, period: float, window: float) -> None:
        self.per_second = start_tpm / 60.0
        self.cap = cap_tpm / 60.0
        self.period = period
        self.window = window
        self.events: deque[tuple[float, int]] = deque()
        self.tokens = 0
        self.busy_since: float | None = None

    def _expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.window:
            self.tokens -= self.events.popleft()[1]

    def admit(self, now: float, tokens: int) -> tuple[bool, bool, float]:
        """(accepted, over the limit, retry_after)."""
        self._expire(now)
        budget = self.per_second * self.window
        if self.tokens / budget >= self.GROW_AT:
            if self.busy_since is None:
                self.busy_since = now
            elif now - self.busy_since >= self.period and self.per_second < self.cap:
                self.per_second = min(self.cap, self.per_second * 2)
                self.busy_since = now
                budget = self.per_second * self.window
        else:
            self.busy_since = None
        after = self.tokens + tokens
        if after > self.REFUSE_AT * budget:
            return False, True, 1.0
        self.events.append((now, tokens))
        self.tokens = after
        return True, after > budget, 0.0

    def headers(self, over: bool) -> dict[str, str]:
        """``x-ratelimit-limit-tokens-prompt`` (tokens per second) and ``x-ratelimit-over-limit``."""
        return {
            "x-ratelimit-limit-tokens-prompt": str(int(self.per_second)),
            "x-ratelimit-over-limit": "yes" if over else "no",
        }
