"""Before a server has answered anything: say what is wrong with its address at once, retry for a short window.

A run's first request (the canary, a rerank job's first request, the batch tier's first upload) is where
a wrong ``model.base_url`` shows: a closed port, a name that does not resolve, a TLS mismatch, a 401, 403
or 404. Each is said on stderr as it happens, naming the server (``host:port``, never a secret), what was
tried and the likely fix. A failure to connect is retried for ``limits.connect_timeout`` seconds (a server
still starting up), with a line at every retry, and then the run gives up with ``ServerUnreachable``
(exit code 68). A failed TLS handshake is not retried: it fails the same way every time. Nothing written
before the first answer binds the output: a manifest that records no shard is taken over by the next run,
whatever its settings.

Pure apart from the clock and ``say``; ``outage.ServerWatch`` decides when these rules apply (before the
server's first answer) and when the outage rules do (after it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from batchembed.errors import APIError, AuthError, NoAnswer, ServerUnreachable
from batchembed.providers.http import safe_url, server_of
from batchembed.providers.retry import backoff

#: Gateway answers that mean the server behind them cannot be reached (502 bad gateway, 503, 504 timeout).
UNREACHABLE_STATUSES = frozenset({502, 503, 504})
#: Longest pause between two tries while the server cannot be reached: it is noticed back within this.
PROBE_EVERY = 5.0
#: At most one line per this many seconds (several requests failing together are one retry to a reader).
LINE_EVERY = 1.0

_WHAT = {
    "refused": "connection refused",
    "dns": "the name does not resolve",
    "tls": "the TLS handshake failed",
    "connect": "cannot connect",
    "reset": "the connection closed without an answer",
    "timeout": "no answer in time",
}


def is_unreachable(error: APIError) -> bool:
    """Whether ``error`` says the server could not be reached: no HTTP answer, or a gateway saying so."""
    return isinstance(error, NoAnswer) or error.status in UNREACHABLE_STATUSES


def what_failed(error: APIError) -> str:
    """A few words on how the server could not be reached: "connection refused", "HTTP 503"."""
    if isinstance(error, NoAnswer):
        what = _WHAT.get(error.why, "no answer")
        return f"{what} ({error})" if error.why in ("tls", "connect") else what
    return f"HTTP {error.status}"


def likely_fix(error: APIError, url: str) -> str:
    """One sentence on what most likely fixes a server that cannot be reached at ``url``."""
    server = server_of(url)
    why = error.why if isinstance(error, NoAnswer) else None
    if why == "refused":
        return f"nothing listens on {server}: start the server, or correct the host or port in model.base_url"
    if why == "dns":
        host = urlsplit(url).hostname or server
        return f"the name {host} does not resolve: correct the host in model.base_url, or check this machine's DNS"
    if why == "tls":
        return (
            f"the TLS handshake with {server} failed: if the server speaks plain HTTP, write http:// in "
            "model.base_url; if its certificate comes from a private CA, point SSL_CERT_FILE at that CA's bundle"
        )
    if why == "reset":
        return (
            f"{server} closed the connection without an answer: check that model.base_url points at an HTTP "
            "embeddings API (http:// or https://, the right port)"
        )
    if why == "timeout":
        return (
            f"{server} did not answer in time: check that the host is up and that model.base_url points at it "
            "(model.timeout is the wait per request)"
        )
    if why is None:
        return f"a gateway at {server} answered HTTP {error.status}: the server behind it is down or still starting"
    return f"{server} cannot be connected to: check model.base_url and the network path to it (firewall, proxy, VPN)"


def explain_refusal(error: AuthError, url: str, key_env: str | None) -> AuthError:
    """A 401, 403 or 404 with the likely fix added to its message (other refusals as they are).

    ``key_env``: the environment variable whose key was sent (None: no key was sent)."""
    if error.status == 401:
        fix = (
            f"the server refused the API key in {key_env}: check that it holds a valid key for this server"
            if key_env
            else "no API key was sent: set model.api_key_env to the environment variable that holds one"
        )
    elif error.status == 403:
        fix = f"the key{f' in {key_env}' if key_env else ''} may not use this model or endpoint: check its permissions"
    elif error.status == 404:
        fix = (
            "no such route or model there: check model.base_url (OpenAI-compatible servers usually end in /v1) "
            "and model.name"
        )
    else:
        return error
    explained = type(error)(f"{error} (the server at {server_of(url)}). Likely fix: {fix}", error.status)
    explained.headers = error.headers
    return explained


class FirstContact:
    """The connect window: a server that has never answered is retried for ``seconds``, one line per retry."""

    def __init__(
        self,
        url: str,
        seconds: float,
        say: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.seconds = seconds
        self._say = say
        self._clock = clock
        self._wall = wall
        self._since: float | None = None
        self._next_line = 0.0
        self.tries = 0  # failed tries so far (every caller's)

    def failed(self, error: APIError, tries: int) -> float:
        """One try failed without reaching the server: the seconds to wait before the next (``tries``: the
        caller's failed tries in a row, for the backoff). Raises ``ServerUnreachable`` once the window is
        over, or at once for a TLS failure."""
        now = self._clock()
        if self._since is None:
            self._since = now
        self.tries += 1
        url = getattr(error, "url", "") or self.url
        server, what, fix = server_of(url), what_failed(error), likely_fix(error, url)
        left = self._since + self.seconds - now
        if getattr(error, "why", None) == "tls" or left <= 0:
            waited = f" in {self.seconds:.0f}s ({self.tries} tries" if self.tries > 1 else " (1 try"
            raise ServerUnreachable(
                f"could not reach the server at {server}{waited} of {safe_url(url)}: {what}). {_capital(fix)}. "
                "Nothing was sent, and nothing written binds the output: run the same command again once the "
                "server answers."
            )
        delay = min(error.retry_after if error.retry_after is not None else backoff(tries, None), PROBE_EVERY, left)
        until = time.strftime("%H:%M:%S", time.localtime(self._wall() + left))
        if now < self._next_line:
            return delay
        self._next_line = now + LINE_EVERY
        if self.tries == 1:
            self._say(
                f"cannot reach the server at {server}: {what} (tried {safe_url(url)}). {_capital(fix)}. "
                f"Retrying until {until} (limits.connect_timeout = {self.seconds:g}s)"
            )
        else:
            self._say(f"still cannot reach {server}: {what} (try {self.tries}); retrying until {until}")
        return delay


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
