"""JSON in and out over the job's transport, failures classified by the retry policy."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from batchembed import __version__
from batchembed.errors import NoAnswer, redact
from batchembed.providers.ratelimit_headers import is_rate_header
from batchembed.providers.retry import classify
from batchembed.providers.transport import AiohttpTransport, Request, Transport, TransportError


class JSONClient:
    """POSTs JSON to one base URL; raises the ``APIError`` subclass that says what to do on failure.

    ``transport`` carries the bytes (default: a pooled aiohttp session with ``max_connections``);
    tests pass a ``HandlerTransport`` to answer in-process.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_connections: int,
        transport: Transport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "User-Agent": f"batchembed/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._transport: Transport = transport if transport is not None else AiohttpTransport(max_connections)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """POST ``body`` to ``base_url + path``; return the 200 response's bytes and lower-cased headers."""
        url = self.base_url + path
        request = Request("POST", url, self._headers, orjson.dumps(body), self._timeout)
        try:
            resp = await self._transport.send(request)
        except TimeoutError:
            raise NoAnswer("request timed out", "timeout", url) from None
        except TransportError as exc:
            raise NoAnswer(redact(f"connection failed: {exc}"), exc.why, url) from None
        headers = dict(resp.headers)
        if resp.status != 200:
            message, code = error_message(resp.body)
            error = classify(resp.status, redact(f"HTTP {resp.status} from {safe_url(url)}: {message}"), code, headers)
            error.headers = rate_headers(headers)  # a 429 still says what the limits are
            raise error
        return resp.body, headers

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._transport.aclose()


def safe_url(url: str) -> str:
    """``url`` fit for a message: scheme, host, port and path; no user, password or query (a secret may hide
    there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}" if parts.netloc else url.split("?", 1)[0]


def server_of(url: str) -> str:
    """The ``host:port`` a URL connects to (the scheme's port when none is written): how messages name a server."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url.split("?", 1)[0]
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: said as written
        return parts.netloc.rsplit("@", 1)[-1]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"


def rate_headers(headers: dict[str, str]) -> dict[str, str]:
    """The response headers the limiter adapts to."""
    return {k: v for k, v in headers.items() if is_rate_header(k)}


def error_message(payload: bytes) -> tuple[str, str | None]:
    """The server's own message and code from an error body, whatever its shape."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = payload.decode("utf-8", errors="replace").strip()
        return (text[:500] or "(empty body)"), None
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or orjson.dumps(err).decode()[:500]
            code = err.get("code") or err.get("type") or err.get("error_type")
            return str(msg), (str(code) if code is not None else None)
        if isinstance(err, str):  # TEI: {"error": "...", "error_type": "..."}
            return err, doc.get("error_type")
        if "detail" in doc:
            return str(doc["detail"])[:500], None
    return orjson.dumps(doc).decode()[:500], None
