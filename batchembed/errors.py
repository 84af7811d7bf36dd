"""One exception tree for everything batchembed raises on purpose.

    BatchEmbedError                 base; the CLI maps each branch to an exit code
    ├── UsageError                  bad command line (exit 2)
    ├── ConfigError                 job file / --set problems, always naming the key (exit 1)
    ├── InputError                  unreadable input, unknown column, bad row; names file/row/field (exit 1)
    ├── OutputError                 output directory problems: corrupt manifest or shard (exit 1)
    │   └── ResumeRefused           output belongs to a different job fingerprint (exit 1)
    ├── ServerUnreachable           the server never answered, or went away for longer than the job waits
    │                               (exit 68; ``sending/reachability``, ``sending/outage``)
    └── APIError                    the provider answered badly or not at all
        ├── TransientAPIError       408/409/429/5xx, resets, timeouts: retry with backoff
        │   └── NoAnswer            no HTTP answer at all: refused, unresolved name, TLS, reset, timeout
        ├── PayloadTooLarge         413 (and TEI's 424): split the batch
        ├── InputTooLong            400 saying an input is too long: split down to the row
        ├── MalformedResponse       wrong count, dimension, non-finite values: retry, then dead-letter
        └── TerminalAPIError        400/422 other, 402/412: never resend unchanged
            └── AuthError           401/403/404 and quota: fail the whole job fast

Modelled on httpx/openai-python: the class says what the caller should do next, the message says
what happened, quoting the server. Messages never contain the API key (see ``redact``).
"""

from __future__ import annotations

from typing import Any


class BatchEmbedError(Exception):
    """Base of every error batchembed raises deliberately."""


class UsageError(BatchEmbedError):
    """The command line itself is wrong."""


class ConfigError(BatchEmbedError):
    """The job file or an override is wrong; the message names the key."""


class InputError(BatchEmbedError):
    """An input file, column or row cannot be used; the message names file, row or field."""


class OutputError(BatchEmbedError):
    """The output directory is unusable or holds something that cannot be trusted."""


class ResumeRefused(OutputError):
    """The output directory belongs to a job with a different fingerprint."""


class APIError(BatchEmbedError):
    """The provider failed a request. ``status`` is the HTTP status, or None for network errors."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.headers: dict[str, str] = {}  # rate-limit headers of the answer, for the limiter

    @property
    def label(self) -> str:
        """Short name used in retry counters: the status code or the error class."""
        return str(self.status) if self.status is not None else type(self).__name__


class TransientAPIError(APIError):
    """Worth retrying after a delay (rate limit, overload, network failure)."""


class NoAnswer(TransientAPIError):
    """The request got no HTTP answer. ``why`` says how: ``refused`` (nothing listens there), ``dns`` (the
    name does not resolve), ``tls`` (the TLS handshake failed), ``connect`` (another failure to connect),
    ``reset`` (the connection dropped), ``timeout`` (no answer in time); ``url`` is where it was sent."""

    def __init__(self, message: str, why: str, url: str = "") -> None:
        super().__init__(message)
        self.why = why
        self.url = url

    @property
    def label(self) -> str:
        """How it failed (``refused``, ``timeout``...): the retry counters' key."""
        return self.why


class ServerUnreachable(BatchEmbedError):
    """The server could not be reached: never answered within ``limits.connect_timeout``, or stopped
    answering for longer than ``limits.outage_seconds``. The message names the server and the fix."""


class PayloadTooLarge(APIError):
    """The request was too big: send it again as two halves."""


class InputTooLong(APIError):
    """An input exceeded the model's context: split until the offending row is alone."""


class MalformedResponse(APIError):
    """The response did not match the request (count, dimension, non-finite values, bad JSON)."""


class InvalidVectors(MalformedResponse):
    """Some vectors of an answer are all zeros or hold NaN/inf: retried once, then the request is split
    until each such row is alone (retried, then dead-lettered). ``items``: their positions in the answer."""

    def __init__(self, message: str, items: Any = None) -> None:
        super().__init__(message)
        self.items = items


class ServerIgnoredSettings(MalformedResponse):
    """Every vector of an answer has the wrong length: the server ignored ``dimensions`` or serves
    another model. Retrying cannot help; the job stops at once."""


class TerminalAPIError(APIError):
    """Resending the same request cannot succeed."""


class AuthError(TerminalAPIError):
    """Credentials, permissions, quota or model name are wrong: nothing else will work either."""


_SECRETS: list[str] = []


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact`` removes it from any text we print or store."""
    if value and len(value) >= 4 and value not in _SECRETS:
        _SECRETS.append(value)


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text
