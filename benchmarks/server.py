"""A fast, standalone OpenAI-compatible embeddings server for benchmarks.

    python -m benchmarks.server --port 0 --dim 1024 [--rpm N --tpm N] [--pool 4096]

The first line on stdout is ``listening on http://127.0.0.1:PORT`` (flushed), so a parent process can
start it with ``--port 0`` and read the port back.

It is built to cost the client-side benchmark as little CPU as possible (both share the machine):

* a pool of ``--pool`` random L2-normalised float32 vectors is made once at start-up; an input gets
  the pool entry picked by the CRC32 of its UTF-8 bytes (deterministic across runs);
* every response is spliced together from precomputed byte fragments: the float JSON text of each
  vector (float32 shortest repr, exact round trip) or its base64 string; no per-request float
  formatting;
* usage tokens are ``ceil(len(utf8) / 4) + 1`` per input, like ``tests/fakeserver.py``.

With ``--rpm`` and/or ``--tpm`` it enforces requests/min and tokens/min over a sliding 60 s window
like a real provider: a request that would exceed either limit is answered 429 with an integer
``Retry-After`` (>= 1 s, the time until enough of the window has expired) and OpenAI-style
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers (also sent on 200s). Throttled
requests do not count against the window.

``--style`` picks how the limits are announced (the rate-limit styles benchmark runs each):
``openai`` (default: the ``x-ratelimit-*`` headers above), ``ietf`` (``RateLimit-Limit/-Remaining/-Reset``
+ ``RateLimit-Policy: 600000;w=60``), ``ietf-structured`` (``RateLimit-Policy: "tpm";q=600000;w=60`` +
``RateLimit: "tpm";r=...;t=...``), ``x-ratelimit`` (``X-RateLimit-*``, reset as an epoch time in seconds),
``none`` (only 429 + ``Retry-After``), and ``fireworks-adaptive``: a Fireworks-style adaptive limit that
starts at ``--adaptive-start`` tokens/min and doubles (up to ``--adaptive-cap``) after every
``--adaptive-period`` seconds during which the last ``--adaptive-window`` seconds used >= 70% of it;
every answer carries ``x-ratelimit-limit-tokens-prompt`` (tokens per *second*) and
``x-ratelimit-over-limit: yes|no`` (over the limit in the trailing window: served, but marked);
more than 1.5x over the limit is refused with 429.

``GET /stats`` returns ``{"requests", "ok", "throttled", "bad", "tokens_accepted", "first_ts",
"last_ts", ...}``; ``GET /stats?timeline=1`` adds per-second buckets ``[second, ok, throttled,
tokens]`` relative to ``first_ts``; ``POST /stats/reset`` zeroes everything (and the rate window).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import socket
import sys
import time
import zlib
from collections import deque

import numpy as np
import orjson
from aiohttp import web

WINDOW = 60.0


def token_count(text: str) -> int:
    """The server's tokenizer: ``ceil(len(utf8 bytes) / 4) + 1``."""
    return -(-len(text.encode("utf-8")) // 4) + 1


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1m3s", "250ms", "12s"."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    if minutes >= 1:
        return f"{int(minutes)}m{secs:.0f}s"
    return f"{secs:.3g}s"


def make_pool(dim: int, pool: int = 4096, seed: int = 0) -> np.ndarray:
    """The (pool, dim) float32 unit vectors the server answers with."""
    vecs = np.random.default_rng(seed).standard_normal((pool, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


def expected_vectors(texts: list[str], vectors: np.ndarray) -> np.ndarray:
    """What the server returns for ``texts`` given its pool ``vectors``."""
    idx = np.fromiter((zlib.crc32(t.encode("utf-8")) % len(vectors) for t in texts), np.int64, len(texts))
    return vectors[idx]


class SlidingWindow:
    """Requests and tokens accepted in the last 60 s; O(1) amortised per request."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def _expire(self, now: float) -> None:
        events = self.events
        while events and events[0][0] <= now - WINDOW:
            self.tokens -= events.popleft()[1]

    def admit(self, now: float, tokens: int) -> tuple[bool, float, str]:
        """(accepted, retry_after_seconds, which limit refused)."""
        self._expire(now)
        events = self.events
        wait_r = wait_t = 0.0
        if self.rpm is not None and len(events) + 1 > self.rpm:
            # the oldest (len+1-rpm) entries must expire first
            k = len(events) + 1 - self.rpm
            wait_r = events[k - 1][0] + WINDOW - now if k <= len(events) else WINDOW
        if self.tpm is not None and self.tokens + tokens > self.tpm:
            if tokens > self.tpm:
                wait_t = WINDOW  # can never fit; a real provider would 429 (or 400) forever
            else:
                excess = self.tokens + tokens - self.tpm
                freed = 0
                wait_t = WINDOW
                for ts, tok in events:
                    freed += tok
                    if freed >= excess:
                        wait_t = ts + WINDOW - now
                        break
        if wait_r > 0 or wait_t > 0:
            return False, max(wait_r, wait_t), ("requests" if wait_r >= wait_t else "tokens")
        events.append((now, tokens))
        self.tokens += tokens
        return True, 0.0, ""

    def headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* headers describing the window after this request."""
        out: dict[str, str] = {}
        reset = (self.events[-1][0] + WINDOW - now) if self.events else 0.0
        if self.rpm is not None:
            reset_r = (self.events[0][0] + WINDOW - now) if len(self.events) >= self.rpm else 0.0
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(self.events)))
            out["x-ratelimit-reset-requests"] = _duration(max(reset_r, 0.0))
        if self.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self.tokens))
            out["x-ratelimit-reset-tokens"] = _duration(max(reset, 0.0))
        return out


class AdaptiveLimit:
    """A Fireworks-style adaptive prompt-token limit measured over a short trailing window."""

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
        return {
            "x-ratelimit-limit-tokens-prompt": str(int(self.per_second)),
            "x-ratelimit-over-limit": "yes" if over else "no",
        }


def style_headers(style: str, window: SlidingWindow, now: float) -> dict[str, str]:
    """The rate-limit headers of ``style`` describing ``window`` (empty for ``none``)."""
    if style == "openai":
        return window.headers(now)
    if style == "none" or window.tpm is None:
        return {}
    tpm = window.tpm
    remaining = max(0, tpm - window.tokens)
    reset = (window.events[0][0] + WINDOW - now) if window.events else 0.0
    if style == "ietf":
        return {
            "RateLimit-Limit": str(tpm),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(math.ceil(max(reset, 0.0))),
            "RateLimit-Policy": f"{tpm};w={WINDOW:g}",
        }
    if style == "ietf-structured":
        policies = f'"tpm";q={tpm};w={WINDOW:g}'
        states = f'"tpm";r={remaining};t={math.ceil(max(reset, 0.0))}'
        if window.rpm is not None:
            policies = f'"rpm";q={window.rpm};w={WINDOW:g};qu="requests", ' + policies
            states = f'"rpm";r={max(0, window.rpm - len(window.events))};t={math.ceil(max(reset, 0.0))}, ' + states
        return {"RateLimit-Policy": policies, "RateLimit": states}
    if style == "x-ratelimit":
        return {
            "X-RateLimit-Limit": str(tpm),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(math.ceil(time.time() + max(reset, 0.0))),
        }
    raise ValueError(f"unknown style {style!r}")


class Stats:
    """Counters exposed on ``GET /stats``."""

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.throttled = 0
        self.over_limit = 0
        self.throttled_by: dict[str, int] = {"requests": 0, "tokens": 0}
        self.bad = 0
        self.inputs = 0
        self.tokens_accepted = 0
        self.bytes_out = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.timeline: dict[int, list[int]] = {}

    def bucket(self, now: float) -> list[int]:
        if self.first_ts is None:
            self.first_ts = now
        self.last_ts = now
        sec = int(now - self.first_ts)
        b = self.timeline.get(sec)
        if b is None:
            b = self.timeline[sec] = [0, 0, 0, 0]
        return b

    def as_dict(self, timeline: bool) -> dict:
        doc = {
            "requests": self.requests,
            "ok": self.ok,
            "throttled": self.throttled,
            "over_limit": self.over_limit,
            "throttled_by": self.throttled_by,
            "bad": self.bad,
            "inputs": self.inputs,
            "tokens_accepted": self.tokens_accepted,
            "bytes_out": self.bytes_out,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }
        if timeline:
            doc["timeline"] = [[s, *v] for s, v in sorted(self.timeline.items())]
        return doc


class EmbeddingServer:
    """The aiohttp application and its precomputed response fragments."""

    def __init__(
        self,
        dim: int,
        pool: int = 4096,
        rpm: int | None = None,
        tpm: int | None = None,
        seed: int = 0,
        style: str = "openai",
        adaptive: AdaptiveLimit | None = None,
    ) -> None:
        self.dim = dim
        self.style = style
        self.adaptive = adaptive
        self.pool = pool
        self.vectors = vecs = make_pool(dim, pool, seed)
        # {"object":"embedding","embedding":<...>,"index":  then  N}
        self.float_frag = [
            b'{"object":"embedding","embedding":' + orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) + b',"index":'
            for v in vecs
        ]
        self.b64_frag = [
            b'{"object":"embedding","embedding":"'
            + base64.b64encode(v.astype("<f4", copy=False).tobytes())
            + b'","index":'
            for v in vecs
        ]
        self.index_tail = [b"%d}" % i for i in range(4096)]
        self.limits = SlidingWindow(rpm, tpm) if (rpm or tpm) else None
        self.stats = Stats()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        for prefix in ("", "/v1"):
            app.router.add_post(prefix + "/embeddings", self.embeddings)
            app.router.add_get(prefix + "/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.reset_stats)
        return app

    # ---------------------------------------------------------------------------------- handlers

    async def get_stats(self, request: web.Request) -> web.Response:
        doc = self.stats.as_dict(request.query.get("timeline") not in (None, "", "0"))
        doc["dim"] = self.dim
        if self.limits:
            doc["rpm"], doc["tpm"] = self.limits.rpm, self.limits.tpm
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        if self.limits:
            self.limits = SlidingWindow(self.limits.rpm, self.limits.tpm)
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "benchmarks"}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None, headers=None) -> web.Response:
        body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def embeddings(self, request: web.Request) -> web.Response:
        raw = await request.read()
        now = time.time()
        stats = self.stats
        stats.requests += 1
        bucket = stats.bucket(now)
        try:
            doc = orjson.loads(raw)
            texts = doc["input"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            stats.bad += 1
            return self._error(400, "body must be JSON with an 'input' field", "invalid_request_error", None)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            stats.bad += 1
            return self._error(400, "input must be a non-empty string or list of them", "invalid_request_error", None)
        if len(texts) > 2048:
            stats.bad += 1
            return self._error(400, "at most 2048 inputs per request", "invalid_request_error", None)
        dims = doc.get("dimensions")
        if dims is not None and dims != self.dim:
            stats.bad += 1
            return self._error(400, f"this server only serves {self.dim} dimensions", "invalid_request_error", None)
        encoded = [t.encode("utf-8") for t in texts]
        tokens = sum(-(-len(b) // 4) + 1 for b in encoded)

        headers: dict[str, str] | None = None
        if self.adaptive is not None:
            accepted, over, wait = self.adaptive.admit(now, tokens)
            headers = self.adaptive.headers(over)
            bucket[3] = max(bucket[3], int(self.adaptive.per_second))
            if not accepted:
                stats.throttled += 1
                bucket[1] += 1
                headers["Retry-After"] = "1"
                return self._error(429, "Too many requests: far over the limit", "rate_limit_error", None, headers)
            stats.over_limit += over
        if self.limits is not None:
            accepted, wait, which = self.limits.admit(now, tokens)
            headers = style_headers(self.style, self.limits, now)
            if not accepted:
                stats.throttled += 1
                stats.throttled_by[which] += 1
                bucket[1] += 1
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return self._error(
                    429,
                    f"Rate limit reached for {which} per min. Please try again in {wait:.3f}s.",
                    "requests" if which == "requests" else "tokens",
                    "rate_limit_exceeded",
                    headers,
                )

        frag = self.b64_frag if doc.get("encoding_format") == "base64" else self.float_frag
        mask = self.pool - 1 if self.pool & (self.pool - 1) == 0 else None
        tails = self.index_tail
        parts = [b'{"object":"list","data":[']
        append = parts.append
        for i, b in enumerate(encoded):
            h = zlib.crc32(b)
            if i:
                append(b",")
            append(frag[h & mask if mask is not None else h % self.pool])
            append(tails[i] if i < len(tails) else b"%d}" % i)
        model = doc.get("model") if isinstance(doc.get("model"), str) else "bench"
        append(
            b'],"model":' + orjson.dumps(model) + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (tokens, tokens)
        )
        body = b"".join(parts)
        stats.ok += 1
        stats.inputs += len(texts)
        stats.tokens_accepted += tokens
        stats.bytes_out += len(body)
        bucket[0] += 1
        bucket[2] += tokens
        return web.Response(body=body, content_type="application/json", headers=headers)


async def serve(args: argparse.Namespace) -> None:
    adaptive = None
    if args.style == "fireworks-adaptive":
        adaptive = AdaptiveLimit(args.adaptive_start, args.adaptive_cap, args.adaptive_period, args.adaptive_window)
        args.rpm = args.tpm = None
    server = EmbeddingServer(args.dim, args.pool, args.rpm, args.tpm, args.seed, args.style, adaptive)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    port = sock.getsockname()[1]
    print(f"listening on http://{args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=4096, help="distinct precomputed vectors")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute (sliding 60 s window)")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute (sliding 60 s window)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--style",
        default="openai",
        choices=["openai", "ietf", "ietf-structured", "x-ratelimit", "none", "fireworks-adaptive"],
        help="how limits are announced (fireworks-adaptive: an adaptive limit instead of --rpm/--tpm)",
    )
    parser.add_argument("--adaptive-start", type=int, default=300_000, help="adaptive limit at start, tokens/min")
    parser.add_argument("--adaptive-cap", type=int, default=2_400_000, help="adaptive limit ceiling, tokens/min")
    parser.add_argument("--adaptive-period", type=float, default=30.0, help="seconds of >= 70%% use per doubling")
    parser.add_argument("--adaptive-window", type=float, default=10.0, help="seconds the use is measured over")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
