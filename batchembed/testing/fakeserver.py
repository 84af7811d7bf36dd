"""A scriptable fake of the OpenAI / Fireworks embeddings and rerank APIs, written once as a handler.

:class:`FakeProvider` answers :class:`~batchembed.providers.transport.Request` objects with
:meth:`FakeProvider.handle`, so the same behaviour serves two ways:

* in-process: ``build_runner(job, transport=fake.transport())`` -- no socket, no subprocess;
* over loopback: :class:`batchembed.testing.loopback.FakeServer` puts the handler behind an aiohttp
  app on 127.0.0.1 for CLI subprocesses (kill tests, exit codes) and for real-HTTP tests::

    with FakeServer(dim=64) as srv:
        srv.script(Respond(429, headers={"Retry-After": "0"}), Reset(), Delay(0.5))
        subprocess.run(["batchembed", "run", ...], env={..., "BASE_URL": srv.url})
        assert srv.received_texts() == texts

Answers are pure functions of the request (:mod:`batchembed.testing.answers`), so a test can compute
what the output must hold without talking to the server.

Routes (each also answers under ``/v1``): ``POST /embeddings``, ``POST /rerank``, ``GET /models``.
Every POST is recorded as a :class:`RecordedRequest` (in arrival order, whatever the answer).

batchembed embeds a fixed canary text at the start of every run (``batchembed.servers.CANARY_TEXT``).
Canary requests are answered like any other, but they never consume a scripted rule (unless the rule
matches the canary text) and are left out of :attr:`requests`, :meth:`received_texts`,
:meth:`all_texts` and :meth:`wait_for_requests`; :meth:`canary_requests` lists them.

Knobs and records are guarded by one lock, so a synchronous test thread may drive a server whose
handler runs on another thread's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDict

from batchembed.providers.transport import HandlerTransport, Request, Response, TransportError
from batchembed.servers import CANARY_TEXT
from batchembed.testing.answers import (
    EMBEDDING_FIELDS,
    RERANK_FIELDS,
    Reply,
    _base64_json,
    _float_json,
    error_body,
    expected_score,
    extract_inputs,
    json_bytes,
    token_count,
)
from batchembed.testing.ratelimit import RateWindow

IN_PROCESS_URL = "http://fake-provider.invalid/v1"
"""The base URL of an in-process fake: never resolved, only its path is routed."""


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


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json_bytes(obj))


class FakeProvider:
    """The fake embeddings/rerank server's behaviour, answering requests in-process.

    All knobs are plain attributes that may be changed at any time; see the module docstring for the
    routes. :meth:`transport` hands it to a run; :class:`~batchembed.testing.loopback.FakeServer`
    serves it over HTTP.
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
        self.clock: Callable[[], float] = time.monotonic
        """The rate limits' clock (seconds); a test sets its own to move the window on without sleeping."""
        self._limits = RateWindow()
        self._held = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def url(self) -> str:
        """Base URL to give a client (in-process: a name never resolved, the transport routes by path)."""
        return IN_PROCESS_URL

    def transport(self) -> HandlerTransport:
        """A transport that answers every request with :meth:`handle`, in the caller's event loop."""
        return HandlerTransport(self.handle)

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
            self._limits = RateWindow(rpm, tpm, window, style, clock=lambda: self.clock())

    def hold(self) -> None:
        """Receive and record POSTs but answer none of them until :meth:`release`."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """Answer the held requests (in arrival order) and stop holding."""
        with self._lock:
            self._held = False
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future)

    @property
    def held(self) -> int:
        """Requests parked by :meth:`hold`: recorded, and certain not to be answered before :meth:`release`."""
        with self._lock:
            return len(self._waiters)

    def wait_for_held(self, n: int, timeout: float = 10) -> None:
        """Block until ``n`` requests are parked by :meth:`hold`; raise TimeoutError otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._waiters) >= n, timeout=timeout):
                raise TimeoutError(f"expected {n} held requests within {timeout}s, got {len(self._waiters)}")

    async def _wait_while_held(self) -> None:
        with self._lock:
            if not self._held:
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
            self._lock.notify_all()
        await future

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

    async def handle(self, request: Request) -> Response:
        """Answer one request like the real API would (or as scripted); raise ``TransportError`` for a
        ``Reset`` (the connection dropped without an answer)."""
        path = urlsplit(request.url).path or "/"
        route = path.removeprefix("/v1") if path.startswith("/v1/") else path
        if request.method == "POST" and route in ("/embeddings", "/rerank"):
            return await self._handle(request, path, route[1:])
        if request.method == "GET" and route == "/models":
            name = self.model or "fake-embedding-model"
            return _json(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
        return _json(404, error_body(404, f"no route {request.method} {path}", "not_found"))

    async def _handle(self, request: Request, path: str, kind: str) -> Response:
        raw = request.body
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        inputs, query = extract_inputs(body, kind, self.rerank_format)
        record = RecordedRequest(
            path=path,
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
            return await self._answer(kind, raw, body, record, rule)
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

    async def _answer(self, kind: str, raw: bytes, body: Any, record: RecordedRequest, rule: Rule | None) -> Response:
        await self._wait_while_held()
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        extra_headers: dict[str, str] = {}
        if isinstance(rule, Delay):
            await asyncio.sleep(rule.seconds)
        elif isinstance(rule, Reset):
            raise TransportError("ServerDisconnectedError: the fake server dropped the connection")
        elif isinstance(rule, Respond):
            extra_headers = dict(rule.headers or {})
            if rule.status >= 400 or rule.body is not None:
                record.status = rule.status
                if rule.body is None:
                    return _json(rule.status, error_body(rule.status), extra_headers)
                if isinstance(rule.body, str | bytes):
                    data = rule.body.encode() if isinstance(rule.body, str) else rule.body
                    return Response(rule.status, extra_headers, data)
                return _json(rule.status, rule.body, extra_headers)

        try:
            self._check_auth(record.headers)
            if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
                raise Reply(413, f"payload too large: {len(raw)} bytes > {self.max_body_bytes}")
            if not isinstance(body, dict):
                raise Reply(400, "request body must be a JSON object")
            if kind == "embeddings":
                obj, tokens = self._embeddings(body)
            else:
                obj, tokens = self._rerank(body)
            with self._lock:
                headers = self._limits.admit(tokens)
        except Reply as reply:
            record.status = reply.status
            with self._lock:
                announced = self._limits.headers()
            headers = {**announced, **reply.headers, **extra_headers}
            return _json(reply.status, error_body(reply.status, reply.message, reply.code), headers)
        status = rule.status if isinstance(rule, Respond) else 200
        record.status = status
        return _json(status, obj, {**headers, **extra_headers})

    def _check_auth(self, headers: CIMultiDict[str]) -> None:
        key = self.api_key
        if key is None:
            return
        if headers.get("Authorization", "") != f"Bearer {key}":
            raise Reply(
                401,
                "Incorrect API key provided. You can find your API key in your account settings.",
                "invalid_api_key",
            )

    def _check_count(self, n: int, what: str) -> None:
        if self.max_inputs is not None and n > self.max_inputs:
            raise Reply(413, f"payload too large: {n} {what} > {self.max_inputs}")

    def _check_texts(self, texts: list[str]) -> None:
        limit = self.max_input_chars
        poison = self.poison
        for t in texts:
            if (limit is not None and len(t) > limit) or (poison and any(p.startswith(t) for p in poison)):
                raise Reply(
                    400,
                    f"This model's maximum context length is {limit or 0} characters, "
                    f"however you requested {len(t)} characters. Please reduce your input.",
                    "context_length_exceeded",
                )

    def _check_strict(self, body: dict[str, Any], known: frozenset[str]) -> None:
        if self.strict:
            unknown = sorted(set(body) - known)
            if unknown:
                raise Reply(400, f"unknown field(s) not allowed: {', '.join(unknown)}", "invalid_field")

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Reply(400, "you must provide a model parameter", "missing_model")
        if self.model is not None and model != self.model:
            raise Reply(404, f"The model `{model}` does not exist.", "model_not_found")
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
            raise Reply(400, "'input' must be a string or an array of strings")
        if not texts:
            raise Reply(400, "'input' must not be empty")
        if any(t == "" for t in texts):
            raise Reply(400, "'input' must not contain empty strings")
        dims = body.get("dimensions")
        if dims is None or self.ignore_dimensions:
            dims = self.dim
        elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= self.dim:
            raise Reply(400, f"'dimensions' must be an integer between 1 and {self.dim}, got {dims!r}")
        fmt = body.get("encoding_format")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64") or (fmt == "base64" and not self.base64):
            raise Reply(400, f"unsupported encoding_format: {fmt!r}")
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
            raise Reply(500, f"fake server misconfigured: rerank_format={fmt!r}")
        self._check_strict(body, RERANK_FIELDS[fmt])
        model = self._check_model(body) if fmt != "tei" else str(body.get("model") or "tei")
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise Reply(400, "'query' must be a non-empty string")
        docs_key = "texts" if fmt == "tei" else "documents"
        docs = body.get(docs_key)
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise Reply(400, f"'{docs_key}' must be a non-empty array of strings")
        top_key = {"voyage": "top_k", "tei": None}.get(fmt, "top_n")
        top = body.get(top_key) if top_key else None
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            raise Reply(400, f"'{top_key}' must be a positive integer")
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


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _is_canary(record: RecordedRequest) -> bool:
    return record.kind == "embeddings" and record.inputs == [CANARY_TEXT]
