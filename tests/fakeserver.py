"""A scriptable fake of the OpenAI / Fireworks embeddings and rerank APIs for the test suite.

The server runs on 127.0.0.1 in a background thread of the pytest process, with its own asyncio
loop (aiohttp ``AppRunner`` + ``TCPSite`` on port 0), so synchronous test code can start it, run the
``batchembed`` CLI as a subprocess against ``srv.url`` and then look at what it received::

    with FakeServer(dim=64) as srv:
        srv.script(Respond(429, headers={"Retry-After": "0"}), Reset(), Delay(0.5))
        subprocess.run(["batchembed", "run", ...], env={..., "BASE_URL": srv.url})
        assert srv.received_texts() == texts

Answers are pure functions of the request: vectors come from :func:`expected_vector`, rerank
scores from :func:`expected_score` and token counts from :func:`token_count`, so a test can
compute what the output must hold without talking to the server.

Routes (each also answers under ``/v1``): ``POST /embeddings``, ``POST /rerank``, ``GET /models``.
Every POST is recorded as a :class:`RecordedRequest` (in arrival order, whatever the answer).

batchembed embeds a fixed canary text at the start of every run (``batchembed.servers.CANARY_TEXT``).
Canary requests are answered like any other, but they never consume a scripted rule (unless the rule
matches the canary text) and are left out of :attr:`requests`, :meth:`received_texts`,
:meth:`all_texts` and :meth:`wait_for_requests`; :meth:`canary_requests` lists them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from multidict import CIMultiDict

from batchembed.servers import CANARY_TEXT

__all__ = [
    "MAX_DIM",
    "Delay",
    "FakeServer",
    "RecordedRequest",
    "Reset",
    "Respond",
    "expected_score",
    "expected_vector",
    "token_count",
]

MAX_DIM = 4096
"""The largest native dimension the fake models are described with (Qwen3-Embedding-8B)."""

EMBEDDING_FIELDS = frozenset(
    {"model", "input", "dimensions", "encoding_format", "user", "normalize", "prompt_template"}
)
"""Request fields a strict (Fireworks-like) server accepts on ``/embeddings``."""

RERANK_FIELDS = {
    "fireworks": frozenset({"model", "query", "documents", "top_n", "return_documents", "task"}),
    "cohere": frozenset({"model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc"}),
    "voyage": frozenset({"model", "query", "documents", "top_k", "return_documents", "truncation"}),
    "tei": frozenset({"query", "texts", "return_text", "raw_scores", "truncate", "truncation_direction"}),
}
"""Request fields a strict server accepts on ``/rerank``, per :attr:`FakeServer.rerank_format`."""

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "authentication_error", "invalid_api_key"),
    402: ("Payment required: your account is out of credits.", "billing_error", "insufficient_quota"),
    403: ("You are not allowed to use this model.", "permission_error", None),
    404: ("The model does not exist or you do not have access to it.", "not_found_error", "model_not_found"),
    408: ("Request timed out.", "timeout_error", None),
    409: ("Conflict, please retry.", "conflict_error", None),
    412: ("Precondition failed.", "invalid_request_error", None),
    413: ("payload too large", "invalid_request_error", "payload_too_large"),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    424: ("Model backend failed (out of memory).", "server_error", None),
    429: ("Rate limit reached, please try again later.", "rate_limit_error", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded, please try again later.", "server_error", "overloaded"),
    504: ("Gateway timeout.", "server_error", None),
}

# --------------------------------------------------------------------------------------------------
# Pure functions: what the fake models answer


def token_count(text: str) -> int:
    """The fake tokenizer: ``ceil(len(utf8 bytes) / 4) + 1`` tokens for one input."""
    return -(-len(text.encode("utf-8")) // 4) + 1


@functools.lru_cache(maxsize=1 << 15)
def _cached_vector(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    # Generator.standard_normal(n) yields the first n values of standard_normal(MAX_DIM): the prefix
    # property that makes "dimensions" truncation consistent (Matryoshka) without drawing MAX_DIM values.
    raw = np.random.default_rng(seed).standard_normal(dim)
    vec = (raw / np.linalg.norm(raw)).astype(np.float32)
    vec.flags.writeable = False
    return vec


@functools.lru_cache(maxsize=1 << 14)
def _float_json(text: str, dim: int) -> bytes:
    """The JSON array of ``_cached_vector(text, dim)`` (float32 shortest repr, exact round trip)."""
    return orjson.dumps(_cached_vector(text, dim), option=orjson.OPT_SERIALIZE_NUMPY)


@functools.lru_cache(maxsize=1 << 14)
def _base64_json(text: str, dim: int) -> bytes:
    """The JSON string of the base64 of ``_cached_vector(text, dim)`` as little-endian float32."""
    return b'"%s"' % base64.b64encode(_cached_vector(text, dim).astype("<f4", copy=False).tobytes())


def expected_vector(text: str, dim: int) -> np.ndarray:
    """The embedding the fake server returns for ``text`` at ``dim`` dimensions.

    float32, L2-normalised, a pure function of ``(text, dim)``. Matryoshka-consistent:
    ``expected_vector(t, d)`` equals the first ``d`` components of ``expected_vector(t, 4096)``
    re-normalised (up to float32 rounding: compare with ``np.allclose(..., atol=1e-6)``). The server
    sends exactly these float32 values, so a client decoding them gets bit-identical arrays.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return _cached_vector(text, int(dim)).copy()


def expected_score(query: str, document: str) -> float:
    """The rerank relevance score of ``document`` for ``query``: a pure function in ``[0, 1)``."""
    digest = hashlib.blake2b(query.encode("utf-8") + b"\x00" + document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


# --------------------------------------------------------------------------------------------------
# Scripted behaviours


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


class _Reply(Exception):
    """Raised inside a handler to answer with an error."""

    def __init__(self, status: int, message: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    default_message, etype, default_code = _ERRORS.get(
        status, (f"HTTP {status}", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message or default_message,
            "type": etype,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def _json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=obj if isinstance(obj, bytes) else orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY),
        content_type="application/json",
        headers=headers,
    )


def _fmt_duration(seconds: float) -> str:
    """OpenAI's reset duration format: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_s = f"{rest:.3f}".rstrip("0").rstrip(".") or "0"
    return f"{int(minutes)}m{rest_s}s" if minutes else f"{rest_s}s"


# --------------------------------------------------------------------------------------------------
# The server


class FakeServer:
    """An in-process fake embeddings/rerank server on 127.0.0.1, driven from synchronous tests.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). All knobs are plain attributes
    that may be changed at any time from the test thread; see the module docstring for the routes.
    """

    def __init__(self, dim: int = 64, api_key: str | None = None, *, model: str | None = None) -> None:
        self.dim = dim
        """Native dimension; a request's ``dimensions`` (1..dim) truncates and re-normalises."""
        self.api_key = api_key
        """When set, requests without ``Authorization: Bearer <key>`` get 401."""
        self.model = model
        """When set, requests naming another model get 404 ``model_not_found``."""
        self.max_inputs: int | None = None
        """More inputs (rerank: documents) in one request -> 413."""
        self.max_body_bytes: int | None = None
        """A larger request body -> 413."""
        self.max_input_chars: int | None = None
        """Any longer input -> 400 ``context_length_exceeded``."""
        self.poison: set[str] = set()
        """Texts that always get 400 ``context_length_exceeded`` when present in a request, and so do their
        prefixes (a client that cuts a refused text and sends it again is refused again)."""
        self.reorder = False
        """Return ``data`` in reversed order (indices stay correct)."""
        self.latency = 0.0
        """Seconds added before every answer."""
        self.base64 = True
        """Whether ``encoding_format: "base64"`` is honoured (False: 400 like a strict server)."""
        self.strict = False
        """Reject unknown JSON fields with 400 (like Fireworks' ``additionalProperties: false``)."""
        self.usage_scale = 1.0
        """Multiplies the ``usage`` reported (Infinity reports characters: about 5x tokens)."""
        self.ignore_dimensions = False
        """Answer the native ``dim`` whatever ``dimensions`` asks (a server that does not support it)."""
        self.served_model: str | None = None
        """The ``model`` named in answers (default: the requested one)."""
        self.vector_salt = ""
        """Prepended to every text before its vector is drawn: a different model behind the same name."""
        self.rerank_format = "fireworks"
        """Rerank wire shape: ``fireworks``, ``cohere`` (``results``), ``voyage`` (``top_k``) or ``tei``."""

        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._rules: list[Rule] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._rpm: int | None = None
        self._tpm: int | None = None
        self._window = 60.0
        self._style = "openai"
        self._rl_log: deque[tuple[float, int]] = deque()

        self._held = False
        self._release_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        """The TCP port, known once started."""

    # ---- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        """Start the loop thread and the HTTP server; return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeServer already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="FakeServer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Release held requests, close all connections, stop the loop thread."""
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _astart(self) -> None:
        self._release_event = asyncio.Event()
        self._release_event.set()
        app = web.Application(client_max_size=1 << 31)
        for prefix in ("", "/v1"):
            app.router.add_post(f"{prefix}/embeddings", self._handle_embeddings)
            app.router.add_post(f"{prefix}/rerank", self._handle_rerank)
            app.router.add_get(f"{prefix}/models", self._handle_models)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _astop(self) -> None:
        self._held = False
        if self._release_event is not None:
            self._release_event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- scripting and knobs ---------------------------------------------------------------------

    def script(self, *rules: Rule) -> None:
        """Queue one-shot behaviours (FIFO), each consumed by one later POST in arrival order.

        A rule with ``match`` is consumed only by a request whose inputs contain that exact text;
        other requests pass it by and take the first rule that applies to them (if any).
        """
        for rule in rules:
            if not isinstance(rule, Respond | Reset | Delay):
                raise TypeError(f"not a rule: {rule!r}")
        with self._lock:
            self._rules.extend(rules)

    @property
    def pending_rules(self) -> list[Rule]:
        """Scripted rules not consumed yet."""
        with self._lock:
            return list(self._rules)

    def rate_limit(
        self, rpm: int | None = None, tpm: int | None = None, *, window: float = 60.0, style: str = "openai"
    ) -> None:
        """Enforce ``rpm`` requests and ``tpm`` tokens per sliding ``window`` seconds (None: no limit).

        Over the limit: 429 with ``Retry-After`` (integer seconds, >= 1) and the style's headers. While
        any limit is set, every answer announces it in ``style``: ``openai`` (``x-ratelimit-limit|
        remaining|reset-requests|tokens``), ``ietf`` (``RateLimit-Limit/-Remaining/-Reset`` +
        ``RateLimit-Policy: T;w=W``, tokens), ``ietf-structured`` (``RateLimit-Policy: "tpm";q=T;w=W`` +
        ``RateLimit: "tpm";r=..;t=..``), ``x-ratelimit`` (``X-RateLimit-*``, reset as epoch ms), ``fireworks``
        (``x-ratelimit-limit-tokens-prompt`` in tokens per second, ``x-ratelimit-over-limit``) or ``none``.
        Tokens are :func:`token_count` per input (rerank: query and documents). Rejected requests do not
        count. Calling this clears the window.
        """
        with self._lock:
            self._rpm = rpm
            self._tpm = tpm
            self._window = float(window)
            self._style = style
            self._rl_log.clear()

    def hold(self) -> None:
        """Receive and record POSTs but answer none of them until :meth:`release`."""
        loop = self._require_loop()

        async def _clear() -> None:
            self._held = True
            assert self._release_event is not None
            self._release_event.clear()

        asyncio.run_coroutine_threadsafe(_clear(), loop).result(timeout=10)

    def release(self) -> None:
        """Answer the held requests (in arrival order) and stop holding."""
        loop = self._require_loop()

        def _set() -> None:
            self._held = False
            assert self._release_event is not None
            self._release_event.set()

        loop.call_soon_threadsafe(_set)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("FakeServer is not running")
        return self._loop

    # ---- records -----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every POST received so far (canary requests left out), in arrival order."""
        with self._lock:
            return [r for r in self._requests if not _is_canary(r)]

    def canary_requests(self) -> list[RecordedRequest]:
        """The canary requests batchembed sent at the start of its runs."""
        with self._lock:
            return [r for r in self._requests if _is_canary(r)]

    def received_texts(self) -> list[str]:
        """All inputs of embedding requests answered 200 (canary left out), in arrival order."""
        with self._lock:
            return [
                t
                for r in self._requests
                if r.kind == "embeddings" and r.status == 200 and not _is_canary(r)
                for t in r.inputs
            ]

    def all_texts(self) -> list[str]:
        """All inputs of all embedding requests received (canary left out), whatever the answer."""
        with self._lock:
            return [t for r in self._requests if r.kind == "embeddings" and not _is_canary(r) for t in r.inputs]

    def reset_records(self) -> None:
        """Forget recorded requests (scripted rules and limits stay)."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight

    @property
    def in_flight(self) -> int:
        """Requests received and not answered yet."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests that were pending at the same time (since start / reset_records)."""
        with self._lock:
            return self._max_in_flight

    def wait_for_requests(self, n: int, timeout: float = 10) -> bool:
        """Block until at least ``n`` POSTs were received; return True, raise TimeoutError on timeout."""
        with self._lock:
            count = lambda: sum(1 for r in self._requests if not _is_canary(r))  # noqa: E731
            if not self._lock.wait_for(lambda: count() >= n, timeout=timeout):
                raise TimeoutError(f"expected {n} requests within {timeout}s, got {count()}")
        return True

    # ---- request handling -----------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        name = self.model or "fake-embedding-model"
        return _json_response(200, {"object": "list", "data": [{"id": name, "object": "model"}]})

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        return _json_response(404, _error_body(404, f"no route {request.method} {request.path}", "not_found"))

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "embeddings")

    async def _handle_rerank(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "rerank")

    async def _handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        inputs, query = _extract_inputs(body, kind, self.rerank_format)
        record = RecordedRequest(
            path=request.path,
            inputs=inputs,
            body=body if isinstance(body, dict) else {},
            headers=CIMultiDict(request.headers),
            kind=kind,
        )
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            rule = self._take_rule(inputs, query)
            self._lock.notify_all()
        try:
            return await self._answer(request, kind, raw, body, record, rule)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _take_rule(self, inputs: list[str], query: str | None) -> Rule | None:
        """Pop the first queued rule that applies to a request with these texts (lock held)."""
        canary = inputs == [CANARY_TEXT]
        for i, rule in enumerate(self._rules):
            if canary and rule.match != CANARY_TEXT:
                continue
            if rule.match is None or rule.match in inputs or (query is not None and rule.match == query):
                return self._rules.pop(i)
        return None

    async def _answer(
        self,
        request: web.Request,
        kind: str,
        raw: bytes,
        body: Any,
        record: RecordedRequest,
        rule: Rule | None,
    ) -> web.StreamResponse:
        if self._held and self._release_event is not None:
            await self._release_event.wait()
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        extra_headers: dict[str, str] = {}
        if isinstance(rule, Delay):
            await asyncio.sleep(rule.seconds)
        elif isinstance(rule, Reset):
            return self._abort(request)
        elif isinstance(rule, Respond):
            extra_headers = dict(rule.headers or {})
            if rule.status >= 400 or rule.body is not None:
                record.status = rule.status
                if rule.body is None:
                    return _json_response(rule.status, _error_body(rule.status), extra_headers)
                if isinstance(rule.body, str | bytes):
                    data = rule.body.encode() if isinstance(rule.body, str) else rule.body
                    return web.Response(status=rule.status, body=data, headers=extra_headers)
                return _json_response(rule.status, rule.body, extra_headers)

        try:
            self._check_auth(request)
            if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
                raise _Reply(413, f"payload too large: {len(raw)} bytes > {self.max_body_bytes}")
            if not isinstance(body, dict):
                raise _Reply(400, "request body must be a JSON object")
            if kind == "embeddings":
                obj, tokens = self._embeddings(body)
            else:
                obj, tokens = self._rerank(body)
            headers = self._rate_limit_admit(tokens)
        except _Reply as reply:
            record.status = reply.status
            headers = {**self._rate_limit_headers(), **reply.headers, **extra_headers}
            return _json_response(reply.status, _error_body(reply.status, reply.message, reply.code), headers)
        status = rule.status if isinstance(rule, Respond) else 200
        record.status = status
        return _json_response(status, obj, {**headers, **extra_headers})

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        """Drop the connection without a byte of response."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    def _check_auth(self, request: web.Request) -> None:
        key = self.api_key
        if key is None:
            return
        if request.headers.get("Authorization", "") != f"Bearer {key}":
            raise _Reply(
                401,
                "Incorrect API key provided. You can find your API key in your account settings.",
                "invalid_api_key",
            )

    def _check_count(self, n: int, what: str) -> None:
        if self.max_inputs is not None and n > self.max_inputs:
            raise _Reply(413, f"payload too large: {n} {what} > {self.max_inputs}")

    def _check_texts(self, texts: list[str]) -> None:
        limit = self.max_input_chars
        poison = self.poison
        for t in texts:
            if (limit is not None and len(t) > limit) or (poison and any(p.startswith(t) for p in poison)):
                raise _Reply(
                    400,
                    f"This model's maximum context length is {limit or 0} characters, "
                    f"however you requested {len(t)} characters. Please reduce your input.",
                    "context_length_exceeded",
                )

    def _check_strict(self, body: dict[str, Any], known: frozenset[str]) -> None:
        if self.strict:
            unknown = sorted(set(body) - known)
            if unknown:
                raise _Reply(400, f"unknown field(s) not allowed: {', '.join(unknown)}", "invalid_field")

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Reply(400, "you must provide a model parameter", "missing_model")
        if self.model is not None and model != self.model:
            raise _Reply(404, f"The model `{model}` does not exist.", "model_not_found")
        return model

    def _embeddings(self, body: dict[str, Any]) -> tuple[bytes, int]:
        self._check_strict(body, EMBEDDING_FIELDS)
        model = self._check_model(body)
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and all(isinstance(t, str) for t in inp):
            texts = inp
        else:
            raise _Reply(400, "'input' must be a string or an array of strings")
        if not texts:
            raise _Reply(400, "'input' must not be empty")
        if any(t == "" for t in texts):
            raise _Reply(400, "'input' must not contain empty strings")
        dims = body.get("dimensions")
        if dims is None or self.ignore_dimensions:
            dims = self.dim
        elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= self.dim:
            raise _Reply(400, f"'dimensions' must be an integer between 1 and {self.dim}, got {dims!r}")
        fmt = body.get("encoding_format")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64") or (fmt == "base64" and not self.base64):
            raise _Reply(400, f"unsupported encoding_format: {fmt!r}")
        self._check_count(len(texts), "inputs")
        self._check_texts(texts)

        tokens = sum(token_count(t) for t in texts)
        order = range(len(texts) - 1, -1, -1) if self.reorder else range(len(texts))
        encode = _float_json if fmt == "float" else _base64_json
        salt = self.vector_salt
        # Assembled from per-vector cached JSON fragments: large float answers stay cheap.
        items = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, encode(salt + texts[i], dims)) for i in order
        )
        reported = round(tokens * self.usage_scale)
        usage = orjson.dumps({"prompt_tokens": reported, "total_tokens": reported})
        served = orjson.dumps(self.served_model or model)
        payload = b'{"object":"list","model":%s,"data":[%s],"usage":%s}' % (served, items, usage)
        return payload, tokens

    def _rerank(self, body: dict[str, Any]) -> tuple[Any, int]:
        fmt = self.rerank_format
        if fmt not in RERANK_FIELDS:
            raise _Reply(500, f"fake server misconfigured: rerank_format={fmt!r}")
        self._check_strict(body, RERANK_FIELDS[fmt])
        model = self._check_model(body) if fmt != "tei" else str(body.get("model") or "tei")
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise _Reply(400, "'query' must be a non-empty string")
        docs_key = "texts" if fmt == "tei" else "documents"
        docs = body.get(docs_key)
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise _Reply(400, f"'{docs_key}' must be a non-empty array of strings")
        top_key = {"voyage": "top_k", "tei": None}.get(fmt, "top_n")
        top = body.get(top_key) if top_key else None
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            raise _Reply(400, f"'{top_key}' must be a positive integer")
        self._check_count(len(docs), "documents")
        self._check_texts([query, *docs])

        tokens = token_count(query) + sum(token_count(d) for d in docs)
        scored = sorted(((expected_score(query, d), i) for i, d in enumerate(docs)), key=lambda si: (-si[0], si[1]))
        if top is not None:
            scored = scored[:top]
        default_return = fmt == "fireworks"
        if fmt == "tei":
            return_docs = bool(body.get("return_text", False))
            items = [{"index": i, "score": s, **({"text": docs[i]} if return_docs else {})} for s, i in scored]
            return items, tokens
        return_docs = bool(body.get("return_documents", default_return))
        items = []
        for s, i in scored:
            item: dict[str, Any] = {"index": i, "relevance_score": s}
            if return_docs:
                item["document"] = {"text": docs[i]} if fmt == "cohere" else docs[i]
            items.append(item)
        if fmt == "cohere":
            return {
                "id": "fake-rerank",
                "results": items,
                "meta": {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": tokens}},
            }, tokens
        usage = {"prompt_tokens": tokens, "total_tokens": tokens} if fmt == "fireworks" else {"total_tokens": tokens}
        return {"object": "list", "model": model, "data": items, "usage": usage}, tokens

    # ---- rate limiting (loop thread) ------------------------------------------------------------

    def _rate_limit_prune(self, now: float) -> None:
        log_ = self._rl_log
        while log_ and log_[0][0] <= now - self._window:
            log_.popleft()

    def _rate_limit_admit(self, tokens: int) -> dict[str, str]:
        """Count one request of ``tokens`` against the limits or raise a 429 reply."""
        with self._lock:
            rpm, tpm = self._rpm, self._tpm
            if rpm is None and tpm is None:
                return {}
            now = time.monotonic()
            self._rate_limit_prune(now)
            log_ = self._rl_log
            wait = 0.0
            reason = None
            if rpm is not None and len(log_) + 1 > rpm:
                # the entry whose expiry makes room for one more request
                idx = len(log_) - rpm
                wait = max(wait, log_[idx][0] + self._window - now) if idx >= 0 else self._window
                reason = f"requests per {self._window:g}s: limit {rpm}"
            if tpm is not None:
                used = sum(t for _, t in log_)
                if tokens > tpm:
                    wait = max(wait, self._window)
                    reason = f"tokens per {self._window:g}s: limit {tpm}, requested {tokens}"
                elif used + tokens > tpm:
                    freed = 0
                    for ts, t in log_:
                        freed += t
                        if used - freed + tokens <= tpm:
                            wait = max(wait, ts + self._window - now)
                            break
                    reason = f"tokens per {self._window:g}s: limit {tpm}, used {used}, requested {tokens}"
            if reason is None:
                log_.append((now, tokens))
                return self._rate_limit_headers_locked(now)
            headers = self._rate_limit_headers_locked(now)
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise _Reply(429, f"Rate limit reached for {reason}. Please try again later.", "rate_limit_exceeded", headers)

    def _rate_limit_headers(self) -> dict[str, str]:
        with self._lock:
            if self._rpm is None and self._tpm is None:
                return {}
            now = time.monotonic()
            self._rate_limit_prune(now)
            return self._rate_limit_headers_locked(now)

    def _rate_limit_headers_locked(self, now: float) -> dict[str, str]:
        if self._style != "openai":
            return self._styled_headers_locked(now)
        log_ = self._rl_log
        headers: dict[str, str] = {}
        if self._rpm is not None:
            remaining = max(0, self._rpm - len(log_))
            reset = (log_[0][0] + self._window - now) if log_ else 0.0
            headers["x-ratelimit-limit-requests"] = str(self._rpm)
            headers["x-ratelimit-remaining-requests"] = str(remaining)
            headers["x-ratelimit-reset-requests"] = _fmt_duration(reset)
        if self._tpm is not None:
            used = sum(t for _, t in log_)
            reset = (log_[0][0] + self._window - now) if log_ else 0.0
            headers["x-ratelimit-limit-tokens"] = str(self._tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self._tpm - used))
            headers["x-ratelimit-reset-tokens"] = _fmt_duration(reset)
        return headers

    def _styled_headers_locked(self, now: float) -> dict[str, str]:
        log_ = self._rl_log
        used = sum(t for _, t in log_)
        reset = (log_[0][0] + self._window - now) if log_ else 0.0
        return _styled_headers(self._style, self._tpm, used, reset, self._window)


def _styled_headers(style: str, tpm: int | None, used: int, reset: float, window: float) -> dict[str, str]:
    """Rate-limit headers of a non-OpenAI ``style`` for a tokens limit ``tpm`` per ``window`` seconds."""
    if style == "none" or tpm is None:
        return {}
    remaining = max(0, tpm - used)
    reset_s = str(math.ceil(max(reset, 0.0)))
    if style == "ietf":
        return {
            "RateLimit-Limit": str(tpm),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": reset_s,
            "RateLimit-Policy": f"{tpm};w={window:g}",
        }
    if style == "ietf-structured":
        return {"RateLimit-Policy": f'"tpm";q={tpm};w={window:g}', "RateLimit": f'"tpm";r={remaining};t={reset_s}'}
    if style == "x-ratelimit":
        return {
            "X-RateLimit-Limit": str(tpm),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int((time.time() + max(reset, 0.0)) * 1000)),
        }
    if style == "fireworks":
        per_second = tpm / window
        return {
            "x-ratelimit-limit-tokens-prompt": str(int(per_second)),
            "x-ratelimit-over-limit": "yes" if used > tpm else "no",
        }
    raise ValueError(f"unknown rate-limit style {style!r}")


def _is_canary(record: RecordedRequest) -> bool:
    return record.kind == "embeddings" and record.inputs == [CANARY_TEXT]


def _extract_inputs(body: Any, kind: str, rerank_format: str) -> tuple[list[str], str | None]:
    """The texts of a request (embedding inputs or rerank documents) and the rerank query."""
    if not isinstance(body, dict):
        return [], None
    if kind == "embeddings":
        inp = body.get("input")
        if isinstance(inp, str):
            return [inp], None
        return (_strings(inp) if isinstance(inp, list) else []), None
    docs = body.get("texts") if rerank_format == "tei" else body.get("documents")
    query = body.get("query")
    return (_strings(docs) if isinstance(docs, list) else []), (query if isinstance(query, str) else None)


def _strings(items: Iterable[Any]) -> list[str]:
    return [x for x in items if isinstance(x, str)]
