"""OpenAI-compatible ``POST {base_url}/embeddings`` over the job's transport (pooled aiohttp by default).

Used for Fireworks, OpenAI and any compatible server (vLLM, TEI's OpenAI route, Infinity,
``batchembed serve``). Responses are mapped back by ``index`` and checked (count, dimension, finite
values); vectors go straight into one float32 array: base64 answers decoded in bulk (``bulk_answer``),
float JSON through orjson and a single ``numpy`` conversion, where they are read (see ``embed``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from batchembed.errors import InvalidVectors, MalformedResponse, ServerIgnoredSettings, TerminalAPIError
from batchembed.providers.base import EmbeddingResult, vector_norms
from batchembed.providers.bulk_answer import float_matrix, parse_base64_answer
from batchembed.providers.http import JSONClient, rate_headers
from batchembed.providers.request_fields import embedding_options
from batchembed.providers.transport import Transport


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
        cut_to: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        transport: Transport | None = None,
        role: str = "document",
    ) -> None:
        self.provider = provider
        self.role = role  # input.role: Voyage is told it embeds queries (``request_fields``)
        self.model = model
        self.dimensions = dimensions  # sent as `dimensions` (None: not sent)
        self.cut_to = cut_to  # Matryoshka vectors cut to this size here (servers that ignore `dimensions`)
        self.extra_body = dict(extra_body or {})
        self.use_base64 = use_base64
        self.fall_back_to_float = fall_back_to_float
        self._http = JSONClient(base_url, api_key, timeout, max_connections, transport)

    def request_body(self, texts: list[str], full: bool = False) -> dict[str, Any]:
        """The JSON body for ``texts`` in the provider's field names (``request_fields``); ``full``: the
        model's own size asked (no dimension field)."""
        options = embedding_options(
            self.provider,
            dimensions=None if full else self.dimensions,
            base64=self.use_base64,
            role=self.role,
            extra_body=self.extra_body,  # [model] extra_body; config validation keeps it off model/input
        )
        return {**options, "model": self.model, "input": texts}

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Send one request; raise the ``APIError`` subclass that says what to do on failure.

        The answer is decoded where it was read, on the event loop: one orjson parse and a SIMD base64
        decode, ~3 ms for 256 x 1024. A decoding thread was measured against this on 2 cores (100k x 1024,
        32 and 64 in flight, three runs each): the same speed for base64, 1 s slower for float (an orjson
        parse holds the GIL the event loop needs), and 80-100 MB more peak RSS (answers queued for it)."""
        return await self._embed(texts, full=False)

    async def embed_full(self, texts: list[str]) -> EmbeddingResult:
        """The model's full vectors for ``texts``: ``dimensions`` neither sent nor cut here (the canary
        asks once, to learn whether the model's vectors are unit length)."""
        return await self._embed(texts, full=True)

    async def _embed(self, texts: list[str], *, full: bool) -> EmbeddingResult:
        body = self.request_body(texts, full)
        try:
            payload, headers = await self._http.post("/embeddings", body)
        except TerminalAPIError as exc:
            # encoding = "auto" on an unknown server: base64 is ~4x smaller and much faster to decode,
            # but a server that rejects it gets floats from then on.
            if body.get("encoding_format") == "base64" and self.fall_back_to_float and _rejects_base64(exc):
                self.use_base64 = False
                return await self._embed(texts, full=full)
            raise
        want = None if full else self.dimensions
        cut = None if full else self.cut_to
        vectors, tokens, served, norms = decode_answer(payload, len(texts), want, cut)
        return EmbeddingResult(vectors, tokens, rate_headers(headers), served, norms)

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._http.aclose()


def _rejects_base64(exc: TerminalAPIError) -> bool:
    text = str(exc).lower()
    return exc.status in (400, 422) and ("encoding" in text or "base64" in text)


def decode_answer(
    payload: bytes, expected: int, dimensions: int | None, cut: int | None
) -> tuple[np.ndarray, int | None, str | None, np.ndarray]:
    """``parse_answer``, the client-side cut to ``cut`` dimensions (when set) and each vector's length
    (measured here, for ``normalize.VectorCheck``)."""
    vectors, tokens, served = parse_answer(payload, expected, dimensions)
    if cut is not None:
        vectors = cut_dimensions(vectors, cut)
    return vectors, tokens, served, vector_norms(vectors)


def parse_embeddings(payload: bytes, expected: int, dimensions: int | None) -> tuple[np.ndarray, int | None]:
    """Decode an embeddings response into a (expected, dim) float32 array ordered by ``index``.

    Raises ``MalformedResponse`` when the count, the indices, the dimension or the values are wrong,
    ``ServerIgnoredSettings`` when every vector has a length other than ``dimensions``.
    """
    vectors, tokens, _ = parse_answer(payload, expected, dimensions)
    return vectors, tokens


def parse_answer(payload: bytes, expected: int, dimensions: int | None) -> tuple[np.ndarray, int | None, str | None]:
    """``parse_embeddings`` plus the ``model`` the answer names (None when it names none).

    A base64 answer is decoded in bulk (``bulk_answer``); anything that path is unsure of is parsed
    here item by item, which raises the precise error."""
    fast = parse_base64_answer(payload, expected, dimensions)
    if fast is not None:
        return fast
    try:
        doc = orjson.loads(payload)
        items = doc["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise MalformedResponse(f"response is not an embeddings list: {payload[:200]!r}") from None
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise MalformedResponse(f"asked for {expected} embeddings, got {got}")
    fast = float_matrix(items)  # a float answer in order, in one conversion; else item by item below
    if fast is not None and (dimensions is None or fast.shape[1] == dimensions) and np.isfinite(fast).all():
        return fast, usage_tokens(doc.get("usage")), _served(doc)
    rows = [_decode(item.get("embedding") if isinstance(item, dict) else None) for item in items]
    dim = len(rows[0]) if rows else (dimensions or 0)
    if dimensions is not None and dim != dimensions:
        if all(len(r) == dim for r in rows):  # the whole answer: the server ignores the setting
            raise ServerIgnoredSettings(
                f"asked for {dimensions} dimensions, the server answered {dim} for every input: it ignores "
                f"`dimensions` or serves another model. Set model.dimensions = {dim} (or remove it), or "
                'model.dimensions_by = "client" to cut Matryoshka vectors to size here'
            )
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
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidVectors(f"response holds NaN or infinite values (vector {int(bad[0])})", items=bad)
    return out, usage_tokens(doc.get("usage")), _served(doc)


def _served(doc: Any) -> str | None:
    """The ``model`` an answer names, when it names one."""
    served = doc.get("model") if isinstance(doc, dict) else None
    return served if isinstance(served, str) else None


def usage_tokens(usage: Any) -> int | None:
    """The input tokens an answer's ``usage`` reports: ``prompt_tokens``, else ``total_tokens`` (Voyage
    reports only that; for embeddings the two are the same); None when it reports neither."""
    if not isinstance(usage, Mapping):
        return None
    for name in ("prompt_tokens", "total_tokens"):
        if isinstance(usage.get(name), int) and not isinstance(usage.get(name), bool):
            return int(usage[name])
    return None


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


def cut_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation done here: the first ``dimensions`` components, L2-normalised again."""
    if vectors.shape[1] < dimensions:
        raise ServerIgnoredSettings(
            f"model.dimensions = {dimensions} cannot be cut from the server's {vectors.shape[1]}-dimensional "
            f"vectors; set model.dimensions to at most {vectors.shape[1]}"
        )
    cut = np.array(vectors[:, :dimensions], dtype=np.float32, order="C")  # a copy: answers may be read-only
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    np.divide(cut, norms, out=cut, where=norms > 0)
    return cut
