"""What to do about a failed request: classify it, and how long to wait. Pure.

Policy (the provider brief's table): 408/409/429/5xx, resets and timeouts are retried with
exponential backoff and jitter, honouring ``retry-after-ms`` then ``Retry-After`` (seconds or an
HTTP date); 413 (and TEI's 424) split the batch; a 400 saying an input is too long splits down to
the offending row; 401/403/404/402/412 and OpenAI's ``insufficient_quota`` fail the whole job.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

from batchembed.errors import (
    APIError,
    AuthError,
    InputTooLong,
    PayloadTooLarge,
    TerminalAPIError,
    TransientAPIError,
)

#: Longest server-requested wait we honour as given; longer ones are capped (openai-python uses 60).
MAX_RETRY_AFTER = 120.0
#: Backoff when the server gives no delay: min(BASE * 2**attempt, CAP) with full jitter.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

_TOO_LONG_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "too long",
    "too many tokens",
    "exceeds the maximum",
    "input length",
    "token limit",
    "must have less than",  # TEI: "inputs must have less than 512 tokens"
)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after-ms`` or ``Retry-After``; None if absent."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return min(value, MAX_RETRY_AFTER)
        except ValueError:
            pass
    ra = lower.get("retry-after")
    if ra is None:
        return None
    try:
        value = float(ra)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        value = parsed.timestamp() - (time.time() if now is None else now)
    if value < 0:
        return 0.0
    return min(value, MAX_RETRY_AFTER)


def classify(status: int, message: str, code: str | None, headers: Mapping[str, str]) -> APIError:
    """The exception a non-2xx answer becomes; its class says what the caller does next."""
    retry_after = parse_retry_after(headers)
    text = message or f"HTTP {status}"
    lowered = f"{text} {code or ''}".lower()
    should_retry = {k.lower(): v for k, v in headers.items()}.get("x-should-retry", "").lower()
    if status == 429 and "insufficient_quota" in lowered:
        return AuthError(f"quota exhausted: {text}", status)
    if status in (401, 403, 404, 402, 412):
        return AuthError(text, status)
    if status in (413, 424):
        return PayloadTooLarge(text, status)
    if status in (400, 422) and any(marker in lowered for marker in _TOO_LONG_MARKERS):
        return InputTooLong(text, status)
    if status in (408, 409, 429) or status >= 500:
        if should_retry == "false":
            return TerminalAPIError(text, status)
        return TransientAPIError(text, status, retry_after)
    if should_retry == "true":
        return TransientAPIError(text, status, retry_after)
    return TerminalAPIError(text, status)


def backoff(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    The server's own delay wins when given; otherwise exponential backoff with "equal jitter" (a
    random wait between half and all of the ceiling): it spreads a herd of clients wider than
    openai-python's 25% jitter while still guaranteeing a minimum pause.
    """
    if retry_after is not None:
        return retry_after
    ceiling = min(BACKOFF_BASE * (2**attempt), BACKOFF_CAP)
    return (rng or random).uniform(ceiling / 2, ceiling)
