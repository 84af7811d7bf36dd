"""One pooled aiohttp session per job, JSON in and out, failures classified by the retry policy."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from batchembed import __version__
from batchembed.errors import TransientAPIError, redact
from batchembed.ratelimit_headers import is_rate_header
from batchembed.retry import classify


class JSONClient:
    """POSTs JSON to one base URL; raises the ``APIError`` subclass that says what to do on failure."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "User-Agent": f"batchembed/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
        return self._session

    async def post(self, path: str, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """POST ``body`` to ``base_url + path``; return the 200 response's bytes and lower-cased headers."""
        url = self.base_url + path
        try:
            async with self._client().post(url, data=orjson.dumps(body)) as resp:
                payload = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except TimeoutError:
            raise TransientAPIError("request timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientAPIError(redact(f"connection failed: {type(exc).__name__}: {exc}")) from None
        if status != 200:
            message, code = error_message(payload)
            error = classify(status, redact(f"HTTP {status} from {url}: {message}"), code, headers)
            error.headers = rate_headers(headers)  # a 429 still says what the limits are
            raise error
        return payload, headers

    async def aclose(self) -> None:
        """Close the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


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
