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

batchembed embeds a fixed canary text at the start of every run (``batchembed.sending.server_checks.CANARY_TEXT``).
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
from typing import Any
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDict

from batchembed.providers.transport import HandlerTransport, Request, Response, TransportError
from batchembed.sending.server_checks import CANARY_TEXT
from batchembed.testing.answering import Answering
from batchembed.testing.answers import (
    Reply,
    error_body,
    extract_inputs,
    json_bytes,
)
from batchembed.testing.ratelimit import AdaptiveLimit, RateWindow
from batchembed.testing.rules import Delay, RecordedRequest, Reset, Respond, Rule
from batchembed.testing.stats import Stats

IN_PROCESS_URL = "http://fake-provider.invalid/v1"
"""The base URL of an in-process fake: never resolved, only its path is routed."""


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json_bytes(obj))


class FakeProvider(Answering):
    """The fake embeddings/rerank server's behaviour, answering requests in-process.

    All knobs are plain attributes that may be changed at any time; see the module docstring for the
    routes. :meth:`transport` hands it to a run; :class:`~batchembed.testing.loopback.FakeServer`
    serves it over HTTP.
    """

    def __init__(self, dim: int = 64, api_key: str | None = None, *, model: str | None = None) -> None:
        super().__init__(dim, api_key, model=model)

        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._rules: list[Rule] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self.clock: Callable[[], float] = time.monotonic
        """The rate limits' clock (seconds); a test sets its own to move the window on without sleeping."""
        self._limits = RateWindow()
        self._adaptive: AdaptiveLimit | None = None
        self.keep_records = True
        """False: requests are counted in :attr:`stats` but not kept (a long benchmark holds no bodies)."""
        self.stats = Stats()
        """Counts of what was answered (``GET /stats`` over loopback)."""
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
        (``x-ratelimit-limit-tokens-prompt`` in tokens per second, ``x-ratelimit-over-limit``), ``none``, or
        ``bare`` (no header at all, not even ``Retry-After`` on a 429).
        Tokens are :func:`token_count` per input (rerank: query and documents). Rejected requests do not
        count. Calling this clears the window.
        """
        with self._lock:
            self._limits = RateWindow(rpm, tpm, window, style, clock=lambda: self.clock())

    def adaptive_limit(self, start_tpm: int, cap_tpm: int, period: float = 30.0, window: float = 10.0) -> None:
        """Enforce a Fireworks-style adaptive tokens limit (see :class:`AdaptiveLimit`) instead of fixed ones."""
        with self._lock:
            self._adaptive = AdaptiveLimit(start_tpm, cap_tpm, period, window)
            self._limits = RateWindow(clock=self._limits.clock)

    def reset_stats(self) -> None:
        """Zero :attr:`stats` and the rate windows (the limits themselves stay)."""
        with self._lock:
            self.stats = Stats()
            limits = self._limits
            self._limits = RateWindow(limits.rpm, limits.tpm, limits.window, limits.style, clock=limits.clock)
            if self._adaptive is not None:
                a = self._adaptive
                self._adaptive = AdaptiveLimit(int(a.per_second * 60), int(a.cap * 60), a.period, a.window)

    def hold(self) -> None:
        """Receive and record POSTs but answer none of them until :meth:`release`."""
        with self._lock:
            self._held = True

    def release(self, count: int | None = None) -> None:
        """Answer the held requests (in arrival order) and stop holding; ``count``: answer only the
        ``count`` oldest held requests and go on holding (a test steps a run forward request by request)."""
        with self._lock:
            if count is None:
                self._held = False
                waiters, self._waiters = self._waiters, []
            else:
                waiters, self._waiters = self._waiters[:count], self._waiters[count:]
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future)

    @property
    def held(self) -> int:
        """Requests parked by :meth:`hold`: recorded, and certain not to be answered before :meth:`release`."""
        with self._lock:
            return len(self._waiters)

    def wait_for_held(self, n: int, timeout: float | None = 10) -> None:
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

    def wait_for_requests(self, n: int, timeout: float | None = 10) -> bool:
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
        if path == "/stats" or path.startswith("/stats?"):
            with self._lock:
                doc = self.stats.as_dict("timeline=1" in request.url)
                doc["dim"] = self.dim
            return _json(200, doc)
        if path == "/stats/reset" and request.method == "POST":
            self.reset_stats()
            return _json(200, {"ok": True})
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
            self.stats.requests += 1
            self.stats.bucket(time.time())
            if self.keep_records:
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
                headers = self._admit(tokens)
        except Reply as reply:
            record.status = reply.status
            self._count_refusal(reply)
            with self._lock:
                announced = self._limits.headers()
            headers = {**announced, **reply.headers, **extra_headers}
            return _json(reply.status, error_body(reply.status, reply.message, reply.code), headers)
        status = rule.status if isinstance(rule, Respond) else 200
        record.status = status
        answer = _json(status, obj, {**headers, **extra_headers})
        with self._lock:
            stats = self.stats
            stats.ok += 1
            stats.inputs += len(record.inputs)
            stats.tokens_accepted += tokens
            stats.bytes_out += len(answer.body)
            bucket = stats.bucket(time.time())
            bucket[0] += 1
            bucket[2] += tokens
        return answer

    def _admit(self, tokens: int) -> dict[str, str]:
        """Count a request against the adaptive limit, then the fixed ones (lock held); its headers."""
        headers: dict[str, str] = {}
        adaptive = self._adaptive
        if adaptive is not None:
            accepted, over, _ = adaptive.admit(self._limits.clock(), tokens)
            headers = adaptive.headers(over)
            bucket = self.stats.bucket(time.time())
            bucket[3] = max(bucket[3], int(adaptive.per_second))
            if not accepted:
                raise Reply(429, "Too many requests: far over the limit", None, {**headers, "Retry-After": "1"})
            self.stats.over_limit += over
        return {**headers, **self._limits.admit(tokens)}

    def _count_refusal(self, reply: Reply) -> None:
        with self._lock:
            stats = self.stats
            if reply.status == 429:
                stats.throttled += 1
                stats.bucket(time.time())[1] += 1
                if reply.limit in stats.throttled_by:
                    stats.throttled_by[reply.limit] += 1
            elif reply.status == 400:
                stats.bad += 1


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _is_canary(record: RecordedRequest) -> bool:
    return record.kind == "embeddings" and record.inputs == [CANARY_TEXT]
