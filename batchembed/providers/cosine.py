"""The one cosine-similarity scorer behind every local "rerank": the provider and ``batchembed serve``.

No cross-encoder weights ship on PyPI, so the local model reranks by the cosine similarity of the
query's embedding with each document's. Both places that do so (``LocalCosineReranker`` in a job,
``/v1/rerank`` in the server) call :func:`cosine_rerank_scores`, so a job run in-process and the same
job sent to ``batchembed serve`` score alike. Vectors are L2-normalised here, not trusted to be:
a model without a Normalize module (or shortened vectors) would otherwise give dot products.
"""

from __future__ import annotations

import numpy as np

#: What a cosine "reranker" is called after the embedding model's name, here and in ``serve``.
RERANK_SUFFIX = " (cosine similarity, not a cross-encoder)"

#: Norms below this count as zero: a zero vector scores 0 against everything instead of NaN.
_MIN_NORM = 1e-12


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` scaled to unit length (float32); zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), _MIN_NORM, None)


def cosine_rerank_scores(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows 1.. (the documents) with row 0 (the query), as float32.

    The shape both callers embed: ``[query, *documents]`` in one model call.
    """
    unit = l2_normalize(vectors)
    return (unit[1:] @ unit[0]).astype(np.float32)
