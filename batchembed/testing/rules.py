"""What a test scripts the fake provider to do to one request (:class:`Respond`, :class:`Reset`,
:class:`Delay`), and what the fake remembers of each request it received (:class:`RecordedRequest`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict


@dataclass(frozen=True)
class Respond:
    """Answer one request with ``status``.

    ``body``: a dict/list (sent as JSON), ``str``/``bytes`` (sent as is, e.g. an HTML proxy page) or
    None: an OpenAI-shaped error ``{"error": {"message", "type", "code"}}`` for status >= 400, and the
    normal answer (with ``headers`` added) for status < 400. ``match``: only a request whose inputs
    (or rerank query) contain exactly this text consumes the rule.
    """

    status: int
    headers: dict[str, str] | None = None
    body: Any = None
    match: str | None = None


@dataclass(frozen=True)
class Reset:
    """Abort the connection of one request without sending any response."""

    match: str | None = None


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then answer one request normally."""

    seconds: float
    match: str | None = None


Rule = Respond | Reset | Delay


@dataclass
class RecordedRequest:
    """One POST the server received.

    ``inputs``: the embedding inputs (a single string input becomes a one-item list) or the rerank
    documents; ``body``: the parsed JSON (``{}`` when it was not a JSON object); ``headers``: a
    case-insensitive copy of the request headers; ``status``: the HTTP status answered, 0 while the
    request is pending and when no response was sent (``Reset``, client gone).
    """

    path: str
    inputs: list[str]
    body: dict[str, Any]
    headers: CIMultiDict[str]
    status: int = 0
    kind: str = "embeddings"
    received_at: float = field(default_factory=time.monotonic)
