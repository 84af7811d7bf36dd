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

import numpy as np
import orjson

from batchembed.errors import MalformedResponse, TerminalAPIError
from batchembed.providers.base import EmbeddingResult
from batchembed.providers.http import JSONClient, rate_headers


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
        fall_back_to_float: bool = False,
    ) -> None:
        self.provider = provider
        self.model = model
        self.dimensions = dimensions
        self.use_base64 = use_base64
        self.fall_back_to_float = fall_back_to_float
        self._http = JSONClient(base_url, api_key, timeout, max_connections)

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
        body = self.request_body(texts)
        try:
            payload, headers = await self._http.post("/embeddings", body)
        except TerminalAPIError as exc:
            # encoding = "auto" on an unknown server: base64 is ~4x smaller and much faster to decode,
            # but a server that rejects it gets floats from then on.
            if body["encoding_format"] == "base64" and self.fall_back_to_float and _rejects_base64(exc):
                self.use_base64 = False
                return await self.embed(texts)
            raise
        vectors, tokens = parse_embeddings(payload, len(texts), self.dimensions)
        return EmbeddingResult(vectors, tokens, rate_headers(headers))

    async def aclose(self) -> None:
        """Close the pooled session."""
        await self._http.aclose()


def _rejects_base64(exc: TerminalAPIError) -> bool:
    text = str(exc).lower()
    return exc.status in (400, 422) and ("encoding" in text or "base64" in text)


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
