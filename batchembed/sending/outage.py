"""One run's watch over its server: first contact, then outages ridden out in the open.

Every request that fails without reaching the server (refused, reset, timed out, a 502/503/504 from a
gateway) is reported here by whoever sent it (the canary, every sender worker, the batch client), and
every answer too. Until the server has answered once, the connect window applies
(``reachability.FirstContact``: a wrong address is named at once and given up on after
``limits.connect_timeout``). After that, a failure is the start of a possible **outage**:

* it is declared — one line on stderr naming the server and until when the run waits for it — when the
  connection is refused or the name does not resolve (nothing listens there any more), or when two
  different requests failed with nothing answered in between (one request failing alone is that
  request's trouble, retried and dead-lettered as before);
* while it lasts, failed tries do not use up a request's ``limits.max_retries``: requests are retried
  every few seconds (``PROBE_EVERY`` at most) and nothing is dead-lettered for the server's absence;
* the first answer ends it, with a line saying so; every answer received before, during and after it is
  committed as usual, so nothing is bought twice;
* when it lasts ``limits.outage_seconds``, ``on_expired`` is called once: the run stops as on SIGTERM
  (complete shards committed, the resume line printed) and exits ``SERVER_UNREACHABLE``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from batchembed.errors import APIError, AuthError
from batchembed.human import duration
from batchembed.providers.http import server_of
from batchembed.providers.retry import backoff
from batchembed.sending.reachability import (
    PROBE_EVERY,
    FirstContact,
    explain_refusal,
    is_unreachable,
    what_failed,
)

#: Failures that leave no doubt that nothing listens at the address any more: an outage at once.
_NOTHING_THERE = ("refused", "dns")


class ServerWatch:
    """Whether the job's server answers, shared by every request of a run (see the module docstring).

    ``key_env``: the environment variable whose key is sent (None: none is), for the 401 hint;
    ``on_expired(message)``: the outage lasted ``outage_seconds`` (the run stops)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        outage_seconds: float,
        say: Callable[[str], None],
        on_expired: Callable[[str], None],
        key_env: str | None = None,
        record: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.server = server_of(url)
        self.outage_seconds = outage_seconds
        self.key_env = key_env
        self.answered_once = False
        self.first = FirstContact(url, connect_timeout, say, clock=clock, wall=wall)
        self.expired: str | None = None  # the message, once an outage outlasted the window
        self._say = say
        self._on_expired = on_expired
        self._record = record  # each outage, once it ended or outlasted its window (``_report.json``)
        self._how = ""
        self._clock = clock
        self._wall = wall
        self._since: float | None = None  # when the failures began (None: the last request was answered)
        self._failing: set[int] = set()
        self._declared = False

    @property
    def in_outage(self) -> bool:
        """Whether an outage is declared now."""
        return self._declared

    def answered(self) -> None:
        """The server answered (any HTTP answer but a gateway's 502/503/504): an outage is over."""
        self.answered_once = True
        if self._since is not None and self._declared:
            away = self._clock() - self._since
            self._say(f"the server at {self.server} answers again (away for {duration(away)})")
            self._note(away, back=True)
        self._since = None
        self._failing = set()
        self._declared = False

    def failed(self, error: APIError, who: Any, tries: int) -> float | None:
        """A try of request ``who`` failed with ``error`` (its ``tries``-th in a row): the seconds to wait before
        trying again when the server cannot be reached (the try does not count against ``max_retries``), or
        None when this is an ordinary failure (an answer). Raises ``ServerUnreachable`` when the server never
        answered and the connect window is over."""
        if not is_unreachable(error):
            self.answered()
            return None
        if not self.answered_once:
            return self.first.failed(error, tries)
        now = self._clock()
        if self._since is None:
            self._since = now
        self._failing.add(id(who))
        if not self._declared and (getattr(error, "why", None) in _NOTHING_THERE or len(self._failing) >= 2):
            self._declared = True
            self._how = what_failed(error)
            until = time.strftime("%H:%M:%S", time.localtime(self._wall() + self._since + self.outage_seconds - now))
            self._say(
                f"the server at {self.server} stopped answering ({what_failed(error)}); waiting for it until "
                f"{until} (limits.outage_seconds = {self.outage_seconds:g}s). Every answer received is kept"
            )
        if not self._declared:
            return None
        left = self._since + self.outage_seconds - now
        if left <= 0:
            if self.expired is None:
                self.expired = (
                    f"the server at {self.server} did not answer for {duration(now - self._since)} "
                    f"(limits.outage_seconds = {self.outage_seconds:g}s; last: {what_failed(error)})"
                )
                self._note(now - self._since, back=False)
                self._on_expired(self.expired)
            return 0.0
        if error.retry_after is not None:  # the server said when to come back: it is asked no sooner
            return min(error.retry_after, left)
        return min(backoff(tries, None), PROBE_EVERY, left)

    def _note(self, seconds: float, back: bool) -> None:
        if self._record is not None:
            self._record({"server": self.server, "how": self._how, "seconds": round(seconds, 1), "back": back})

    def refused(self, error: AuthError) -> AuthError:
        """A 401/403/404 with the likely fix in its message (the server answered: it is reachable)."""
        self.answered_once = True
        return explain_refusal(error, getattr(error, "url", "") or self.url, self.key_env)


def server_watch(
    resolved: Any,
    say: Callable[[str], None],
    on_expired: Callable[[str], None],
    record: Callable[[dict], None] | None = None,
) -> ServerWatch | None:
    """The watch over a ``ResolvedJob``'s server, with the job's windows; None for the local model (no server).
    ``record``: takes each outage's figures (the run's ``Stats.outages``)."""
    model, limits = resolved.model, resolved.config.limits
    if model.provider == "local" or not model.base_url:
        return None
    return ServerWatch(
        model.base_url,
        connect_timeout=limits.connect_timeout,
        outage_seconds=limits.outage_seconds,
        say=say,
        on_expired=on_expired,
        record=record,
        key_env=model.api_key_env if model.api_key_env and os.environ.get(model.api_key_env) else None,
    )
