"""Rerank transports: ``POST {base_url}/rerank`` in each provider's shape, and the local cosine scorer.

Every request asks for the scores of *all* its documents (``top_n`` is applied by the task after
merging split requests, so a split query gives the same answer as one big request). Results are
always mapped back through ``index``.

| format    | request                          | list key  | score key        |
|-----------|----------------------------------|-----------|------------------|
| fireworks | documents, return_documents, task| data      | relevance_score  |
| cohere    | documents (v2: no return_documents) | results | relevance_score  |
| jina      | documents, return_documents      | results   | relevance_score  |
| vllm      | documents                        | results   | relevance_score  |
| voyage    | documents, return_documents, truncation=false | data | relevance_score |
| tei       | texts, return_text               | (array)   | score            |
| auto      | like fireworks without `task`    | any of the above             |

Voyage is told ``truncation: false``: batchembed cuts documents itself (``limits.on_too_long``) and
records the cut, so a server's silent cut would go unreported (``request_fields``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from batchembed.errors import MalformedResponse
from batchembed.providers.cosine import RERANK_SUFFIX, cosine_rerank_scores
from batchembed.providers.http import JSONClient, rate_headers
from batchembed.providers.request_fields import rerank_options
from batchembed.providers.transport import Transport

FORMATS = ("auto", "fireworks", "cohere", "jina", "vllm", "voyage", "tei")


@dataclass
class RerankResult:
    """Scores for one request, ``scores[i]`` answering document ``i``."""

    scores: np.ndarray
    prompt_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def request_body(fmt: str, model: str, query: str, documents: list[str], task: str | None) -> dict[str, Any]:
    """The JSON body a server of ``fmt`` expects, asking for every document's score."""
    if fmt == "tei":
        return {"query": query, "texts": documents, "return_text": False}
    body: dict[str, Any] = {"model": model, "query": query, "documents": documents, **rerank_options(fmt)}
    if fmt not in ("vllm", "cohere"):  # Cohere's v2 rerank has no return_documents (it never returns them)
        body["return_documents"] = False
    if fmt == "fireworks" and task:
        body["task"] = task
    return body


def parse_scores(payload: bytes, expected: int) -> tuple[np.ndarray, int | None]:
    """Scores ordered by ``index`` from any supported response shape; MalformedResponse otherwise."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"rerank response is not JSON: {payload[:200]!r}") from None
    if isinstance(doc, list):
        items, usage = doc, None
    elif isinstance(doc, dict):
        items = doc.get("data", doc.get("results"))
        usage = doc.get("usage")
    else:
        items = usage = None
    if not isinstance(items, list):
        raise MalformedResponse(f"rerank response has no result list: {payload[:200]!r}")
    if len(items) != expected:
        raise MalformedResponse(f"asked to score {expected} documents, got {len(items)} scores")
    scores = np.full(expected, np.nan, dtype=np.float32)
    for item in items:
        if not isinstance(item, dict):
            raise MalformedResponse("rerank result item is not an object")
        index = item.get("index")
        score = item.get("relevance_score", item.get("score"))
        if not isinstance(index, int) or not 0 <= index < expected or not np.isnan(scores[index]):
            raise MalformedResponse(f"bad or repeated index {index!r} in rerank response")
        if not isinstance(score, (int, float)):
            raise MalformedResponse(f"rerank result {index} has no numeric score")
        scores[index] = score
    if not np.isfinite(scores).all():
        raise MalformedResponse("rerank response holds NaN or infinite scores")
    tokens = None
    if isinstance(usage, dict):
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
    return scores, (int(tokens) if isinstance(tokens, int) else None)


class HTTPReranker:
    """Reranking over HTTP in one of the ``FORMATS``."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str,
        api_key: str | None,
        fmt: str,
        timeout: float,
        max_connections: int,
        extra_body: dict[str, Any] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.format = fmt
        self.extra_body = dict(extra_body or {})
        self._http = JSONClient(base_url, api_key, timeout, max_connections, transport)

    async def rerank(self, query: str, documents: list[str], task: str | None = None) -> RerankResult:
        """Score every document against ``query``."""
        body = {**self.extra_body, **request_body(self.format, self.model, query, documents, task)}
        payload, headers = await self._http.post("/rerank", body)
        scores, tokens = parse_scores(payload, len(documents))
        return RerankResult(scores, tokens, rate_headers(headers))

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._http.aclose()


class LocalCosineReranker:
    """Scores by cosine similarity of the local embedder's vectors.

    No cross-encoder weights ship on PyPI, so this is *not* a reranker model: it is the embedding
    model's similarity, reported under the name "<model> (cosine similarity, not a cross-encoder)".
    Scored by ``cosine.cosine_rerank_scores``, the same function ``batchembed serve`` uses.
    """

    provider = "local"

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.model = embedder.model + RERANK_SUFFIX

    async def rerank(self, query: str, documents: list[str], task: str | None = None) -> RerankResult:
        """Cosine of the query's vector with each document's (normalised, whatever the model does)."""
        result = await self._embedder.embed([query, *documents])
        return RerankResult(cosine_rerank_scores(result.vectors), result.prompt_tokens)

    async def aclose(self) -> None:
        """Release the model."""
        await self._embedder.aclose()
