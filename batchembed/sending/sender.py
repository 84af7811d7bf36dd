"""Requests to answers: one request sent under the limits, retried, split or dead-lettered.

The sender knows requests, answers, limits and errors, and nothing about files, Parquet or the
manifest. A task sends through a :class:`Meter` (``async with meter(tokens): ...`` around the
provider call): the meter takes a concurrency slot, admits the tokens against tokens/min and counts
the request, so only what really goes out is paced and charged (a task that finds every answer
elsewhere, the embed task's dedup layer, sends nothing and pays nothing). What the rest of the run
wants to know of a request (the journal's "sent" and "answered", the server's usage) leaves through
the :class:`SendHooks` callbacks.

On failure: a bad key or ignored settings stop the job; too long or too large splits the request in
halves down to one item, whose text a task may cut once more (``shorten``) before it is
dead-lettered; anything else is retried with backoff, up to ``max_retries``, and after
``GIVE_UP_AFTER`` requests in a row exhausted their retries the job gives up. A failure that did not reach
the server at all is the ``ServerWatch``'s (``outage``): before the server's first answer it is retried for
``limits.connect_timeout``, during an outage until the server is back, without using up ``max_retries``.
A stop (``stopping``) ends every wait between tries at once, and a try still waiting for its slot or the
pace never goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from batchembed.errors import (
    APIError,
    AuthError,
    InputTooLong,
    InvalidVectors,
    MalformedResponse,
    PayloadTooLarge,
    ServerIgnoredSettings,
    TerminalAPIError,
    TransientAPIError,
    redact,
)
from batchembed.providers.retry import backoff
from batchembed.sending.outage import ServerWatch
from batchembed.stats import Stats
from batchembed.tasks import Request
from batchembed.tasks.batching import halves

#: Consecutive requests that exhaust their retries before the job gives up instead of dead-lettering.
GIVE_UP_AFTER = 5


class Stop(Exception):
    """Raised inside the pipeline when a signal asked it to stop."""


class Sendable(Protocol):
    """The two task members the sender uses."""

    async def call(self, request: Request, meter: Meter) -> Any:
        """Send ``request`` (its provider call inside ``async with meter(tokens)``); raise ``APIError``."""
        ...

    def accept(self, request: Request, answer: Any) -> int | None:
        """Store the answer; return the tokens the server reported; ``MalformedResponse`` if it does not fit."""
        ...


def _nothing(*_args: Any) -> None:
    return None


@dataclass
class SendHooks:
    """What the sender tells the rest of the run; every hook is optional.

    ``sent(request)``: just before the first attempt goes out (the journal notes the keys).
    ``answered(request, answer)``: the answer was accepted (the journal keeps it; the served model).
    ``usage(estimated, reported)``: our token count of what was sent beside the server's.
    """

    sent: Callable[[Request], None] = _nothing
    answered: Callable[[Request, Any], None] = _nothing
    usage: Callable[[int, int], None] = _nothing


class Meter:
    """One attempt's gate to the provider: ``async with meter(tokens):`` around each call that goes out."""

    def __init__(self, sender: Sender, request: Request, first: bool) -> None:
        self._sender = sender
        self._request = request
        self._first = first
        self.tokens = 0  # tokens admitted through this meter
        self.used = False  # whether anything was sent
        self.latency: float | None = None  # seconds from sending to the answer handled, once it came

    @contextlib.asynccontextmanager
    async def __call__(self, tokens: int) -> AsyncIterator[None]:
        sender = self._sender
        stats = sender.stats
        window = sender.limits.window
        async with window.slot():
            await sender.limits.admit(tokens)
            if sender.stopping:  # stopped while it waited for a slot or the pace: it does not go out
                raise Stop()
            if self._first:
                self._first = False
                sender.hooks.sent(self._request)
            self.used = True
            self.tokens += tokens
            stats.in_flight += 1
            stats.requests += 1
            clock = window.clock
            began = clock()
            try:
                yield
            finally:
                stats.in_flight -= 1
                self.latency = clock() - began
                stats.latencies.append(self.latency)


class Sender:
    """Sends requests of one run; shares the run's limits, stats and give-up count among all workers."""

    def __init__(
        self,
        task: Sendable,
        limits: Any,
        stats: Stats,
        *,
        max_retries: int,
        hooks: SendHooks | None = None,
        shorten: Callable[[Request], bool] | None = None,
        give_up_after: int = GIVE_UP_AFTER,
        watch: ServerWatch | None = None,
    ) -> None:
        self.task = task
        self.limits = limits
        self.stats = stats
        self.max_retries = max_retries
        self.hooks = hooks or SendHooks()
        self.shorten = shorten
        self.give_up_after = give_up_after
        #: Whether the server answers (None: every failure is an ordinary one, retried up to ``max_retries``).
        self.watch = watch
        self._stopping = False
        self._stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self.succeeded_once = False
        self.exhausted_in_a_row = 0

    @property
    def stopping(self) -> bool:
        """Set when the run stops (a signal, an outage outlasting its window): no new attempts, no more
        waiting between them."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = value
        if value and self._stop is not None:
            self._stop[1].set()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next try, or raise ``Stop`` as soon as the run stops."""
        loop = asyncio.get_running_loop()
        if self._stop is None or self._stop[0] is not loop:
            self._stop = (loop, asyncio.Event())
            if self._stopping:
                self._stop[1].set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop[1].wait(), seconds)
        if self._stopping:
            raise Stop()

    async def send(self, request: Request) -> None:
        """Send one request with retries; split on 413, too-long and an all-zero/non-finite vector answered
        twice; dead-letter what still fails.

        Returns once every item of the request has an answer or an error in its piece. Raises what
        stops the job (``AuthError``, ``ServerIgnoredSettings``, a ``TerminalAPIError`` before
        anything succeeded, too many requests in a row given up), and ``Stop`` when asked to stop
        between attempts."""
        attempt = 0  # tries that count against max_retries
        tries = 0  # every try, and the ones in a row the server could not be reached
        away = 0
        while True:
            if self.stopping and tries:
                raise Stop()
            meter = Meter(self, request, first=tries == 0)
            tries += 1
            error: APIError | None = None
            try:
                answer = await self.task.call(request, meter)
            except APIError as exc:
                error = exc
            if error is None:
                if meter.used:
                    self.limits.observe(getattr(answer, "headers", {}), 200, meter.tokens)
                try:
                    reported = self.task.accept(request, answer)
                except MalformedResponse as exc:
                    error = exc
                else:
                    request.spent = (reported or meter.tokens) if meter.used else 0
                    self.hooks.answered(request, answer)
                    self._on_success(request, reported, meter)
                    return
            else:
                self.limits.observe(error.headers, error.status, meter.tokens or request.tokens)
            if isinstance(error, AuthError) and self.watch is not None:
                raise self.watch.refused(error)
            if isinstance(error, (AuthError, ServerIgnoredSettings)):
                raise error
            if isinstance(error, (InputTooLong, PayloadTooLarge, TerminalAPIError)):
                if isinstance(error, TerminalAPIError) and not self.succeeded_once:
                    # Nothing has worked yet: this is the job's settings, not one row. Stop now.
                    raise error
                await self._split_or_fail(request, error)
                return
            if isinstance(error, InvalidVectors) and attempt and len(request.items) > 1:
                # an all-zero or non-finite vector again: find its row by halves (the rest is answered)
                await self._split_or_fail(request, error)
                return
            # transient or malformed: back off and retry
            self.stats.retries[error.label] += 1
            if error.status in (429, 503):  # an overloaded server paces us whether or not it is also away
                self.limits.window.on_throttled(error.retry_after)
            ride = self.watch.failed(error, request, away) if self.watch is not None else None
            if ride is not None:  # the server cannot be reached: wait for it (max_retries is not used up)
                away += 1
                await self.pause(ride)
                continue
            away = 0
            attempt += 1
            if attempt > self.max_retries:
                self.exhausted_in_a_row += 1
                if self.exhausted_in_a_row >= self.give_up_after:
                    raise TransientAPIError(
                        f"{self.give_up_after} requests in a row failed after {self.max_retries} retries; "
                        f"giving up (last error: {error}). Committed shards are kept; run again to resume.",
                        error.status,
                    )
                dead_letter(request, f"gave up after {self.max_retries} retries: {error}")
                return
            delay = backoff(attempt - 1, error.retry_after)
            await self.pause(delay)

    async def _split_or_fail(self, request: Request, error: APIError) -> None:
        n = len(request.items)
        if n == 1:
            if isinstance(error, InputTooLong) and self.shorten is not None and self.shorten(request):
                # the server's "too long" is the last word: cut this one row and send it again
                self.stats.retries["cut-too-long"] += 1
                await self.send(request)
                return
            dead_letter(request, str(error))
            return
        self.stats.retries[f"split-{error.label}"] += 1
        parts = [request.items[a:b] for a, b in halves(0, n)]
        # charge each half its share of the tokens (items are not all the same size, but close enough)
        shares = [Request(request.piece, h, max(1, request.tokens * len(h) // n)) for h in parts]
        await asyncio.gather(*(self.send(part) for part in shares))

    def _on_success(self, request: Request, reported: int | None, meter: Meter) -> None:
        self.succeeded_once = True
        if self.watch is not None and meter.used:
            self.watch.answered()
        self.exhausted_in_a_row = 0
        if not meter.used:
            return  # every answer came from elsewhere: nothing was sent, nothing is paid
        self.limits.window.on_success(meter.latency)
        if reported:
            # the server's count tunes pacing only; it never decides what text is sent or how it is packed
            self.limits.observe_usage(meter.tokens, reported)
            self.hooks.usage(meter.tokens, reported)
        self.stats.tokens += request.spent
        request.piece.chunk.unit.tokens += request.spent


def dead_letter(request: Request, message: str) -> None:
    """Fail every item of ``request`` with ``message`` (secrets removed): they go to ``_failed``."""
    for i in request.items:
        request.piece.errors[int(i)] = redact(message)
