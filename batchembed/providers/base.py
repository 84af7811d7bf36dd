"""The protocol every embedding provider implements, and the value it returns.

The scheduler (``runner``) only ever sees this interface, so a remote HTTP API and the in-process
ONNX model are interchangeable: batching, limits, retries, checkpointing and output are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class EmbeddingResult:
    """Vectors for one request, row ``i`` answering input ``i`` (already mapped back by ``index``).

    ``vectors`` is a C-contiguous float32 array of shape (n_inputs, dim). ``prompt_tokens`` is the
    usage the server reported (None when it reported none). ``headers`` carries response headers
    that matter to rate limiting (lower-cased names), so the limiter can adapt; ``model`` is the
    model the answer names, checked against the one asked for.
    """

    vectors: np.ndarray
    prompt_tokens: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None  # the model the server says answered (its ``model`` field)
    norms: np.ndarray | None = None  # each vector's L2 length, when the provider measured it (with the decoding)


class Embedder(Protocol):
    """Something that turns a list of non-empty strings into vectors."""

    #: Human-readable provider name, recorded in shard metadata ("fireworks", "local", ...).
    provider: str
    #: Model id as sent to / reported by the provider.
    model: str

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed ``texts`` in one request. Raises ``batchembed.errors.APIError`` subclasses."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads or sessions."""
        ...


async def embed_then(embedder: Embedder, texts: list[str], after: Callable[[EmbeddingResult], None]) -> EmbeddingResult:
    """``embedder.embed(texts)``, then ``after(result)`` (which may raise): on the thread that decoded the
    answer when the embedder offers it (``runs_after``: the local model's worker thread), so that what is
    done with each answer stays off the event loop there; else right here, where the answer was decoded."""
    if getattr(embedder, "runs_after", False):
        return await embedder.embed(texts, after=after)
    result = await embedder.embed(texts)
    after(result)
    return result


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """The L2 length of each row of a (n, dim) float32 matrix, in one vectorised call."""
    if vectors.size == 0:
        return np.zeros(len(vectors), dtype=np.float32)
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
