"""OpenAI-compatible ``POST {base_url}/embeddings`` over one pooled aiohttp session.

Used for Fireworks, OpenAI and any compatible server (vLLM, TEI's OpenAI route, Infinity,
``batchembed serve``). Responses are mapped back by ``index`` and checked (count, dimension, finite
values); vectors go straight into one float32 array: base64 through ``numpy.frombuffer``, float
JSON through orjson and a single ``numpy`` conversion.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import aiohttp
import numpy as np
import orjson

from batchembed import __version__
from batchembed.errors import MalformedResponse, TransientAPIError, redact
from batchembed.providers.base import EmbeddingResult
from batchembed.retry import classify


class OpenAICompatibleEmbedder:
    """Embeddings over HTTP in the OpenAI wire shape."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str,
        api_key: str | None,
        dimensions: int | None,
        use_base64: bool,
        timeout: float,
        max_connections: int,
    ) -> None:
        self.provider = provider
        self.model = model
        self.url = f"{base_url.rstrip('/')}/embeddings"
        self.dimensions = dimensions
        self.use_base64 = use_base64
        self._headers = {"Content-Type": "application/json", "User-Agent": f"batchembed/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers, json_serialize=_dumps
            )
        return self._session

    def request_body(self, texts: list[str]) -> dict[str, Any]:
        """The JSON body for ``texts``: only fields every compatible server knows."""
        body: dict[str, Any] = {
            "model": self.model,
            "input": texts,
            "encoding_format": "base64" if self.use_base64 else "float",
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Send one request; raise the ``APIError`` subclass that says what to do on failure."""
        session = self._client()
        try:
            async with session.post(self.url, data=_dumps(self.request_body(texts))) as resp:
                payload = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except TimeoutError:
            raise TransientAPIError("request timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientAPIError(redact(f"connection failed: {type(exc).__name__}: {exc}")) from None
        if status != 200:
            message, code = _error_message(payload)
            raise classify(status, redact(f"HTTP {status} from {self.url}: {message}"), code, headers)
        vectors, tokens = parse_embeddings(payload, len(texts), self.dimensions)
        return EmbeddingResult(vectors, tokens, {k: v for k, v in headers.items() if k.startswith("x-ratelimit")})

    async def aclose(self) -> None:
        """Close the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _error_message(payload: bytes) -> tuple[str, str | None]:
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


def parse_embeddings(payload: bytes, expected: int, dimensions: int | None) -> tuple[np.ndarray, int | None]:
    """Decode an embeddings response into a (expected, dim) float32 array ordered by ``index``.

    Raises ``MalformedResponse`` when the count, the indices, the dimension or the values are wrong.
    """
    try:
        doc = orjson.loads(payload)
        items = doc["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise MalformedResponse(f"response is not an embeddings list: {payload[:200]!r}") from None
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise MalformedResponse(f"asked for {expected} embeddings, got {got}")
    rows = [_decode(item.get("embedding") if isinstance(item, dict) else None) for item in items]
    dim = len(rows[0]) if rows else (dimensions or 0)
    if dimensions is not None and dim != dimensions:
        raise MalformedResponse(f"asked for {dimensions} dimensions, got {dim}")
    out = np.empty((expected, dim), dtype=np.float32)
    seen = np.zeros(expected, dtype=bool)
    for position, (item, row) in enumerate(zip(items, rows, strict=True)):
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < expected or seen[index]:
            raise MalformedResponse(f"bad or repeated index {index!r} in response")
        if len(row) != dim:
            raise MalformedResponse(f"embedding {index} has {len(row)} dimensions, others {dim}")
        seen[index] = True
        out[index] = row
    if not np.isfinite(out).all():
        raise MalformedResponse("response holds NaN or infinite values")
    usage = doc.get("usage") if isinstance(doc, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return out, (int(tokens) if isinstance(tokens, int) else None)


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise MalformedResponse("embedding is not valid base64") from None
        if len(raw) % 4:
            raise MalformedResponse("base64 embedding is not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4")
    if isinstance(value, list):
        try:
            return np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise MalformedResponse("embedding holds non-numbers") from None
    raise MalformedResponse(f"embedding has unexpected type {type(value).__name__}")
