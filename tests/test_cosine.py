"""One cosine rerank: the in-process local reranker and ``batchembed serve``'s /rerank score alike.

The model under test does *not* normalise its vectors (a sentence-transformers directory without a
Normalize module), so a scorer that took dot products for cosines would fail here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchembed.providers.cosine import RERANK_SUFFIX, cosine_rerank_scores, l2_normalize
from batchembed.providers.local import LocalEmbedder
from batchembed.providers.model_files import default_model_files
from batchembed.providers.rerank import LocalCosineReranker
from batchembed.serve.server import Server

QUERY = "I forgot my password, how can I reset it?"
DOCUMENTS = [
    "A recipe for banana bread with walnuts.",
    "To reset your password, click 'Forgot password' on the sign-in page.",
    "Our office is closed on public holidays.",
    "Password resets are emailed within five minutes; check your spam folder.",
]


@pytest.fixture(scope="module")
def unnormalized(tmp_path_factory) -> LocalEmbedder:
    """MiniLM with CLS pooling and no Normalize module: vectors far from unit length."""
    directory: Path = tmp_path_factory.mktemp("cls-minilm")
    model, tokenizer = default_model_files()
    shutil.copy(model, directory / "model.onnx")
    shutil.copy(tokenizer, directory / "tokenizer.json")
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (directory / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    embedder = LocalEmbedder(path=str(directory), threads=1)
    assert not embedder.normalized
    return embedder


def test_scores_are_cosines_of_unnormalised_vectors_and_a_zero_vector_scores_zero():
    vectors = np.array([[3.0, 4.0], [6.0, 8.0], [-4.0, 3.0], [0.0, 0.0], [-1.0, -1.0]], dtype=np.float32)
    scores = cosine_rerank_scores(vectors)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0, -7 / (5 * np.sqrt(2))], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(vectors[:3]), axis=1), 1.0, atol=1e-6)


def test_local_reranker_scores_cosines_even_when_the_model_does_not_normalise(unnormalized):
    vectors, _ = unnormalized.encode([QUERY, *DOCUMENTS])
    norms = np.linalg.norm(vectors, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)
    expected = [float(vectors[0] @ v / (norms[0] * np.linalg.norm(v))) for v in vectors[1:]]
    result = asyncio.run(LocalCosineReranker(unnormalized).rerank(QUERY, DOCUMENTS))
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    assert result.prompt_tokens and result.prompt_tokens > 0


async def _both_scores(embedder: LocalEmbedder) -> tuple[np.ndarray, dict]:
    reranker = LocalCosineReranker(embedder)
    local = await reranker.rerank(QUERY, DOCUMENTS)
    async with TestClient(TestServer(Server(embedder).app())) as client:
        response = await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        assert response.status == 200, await response.text()
        body = await response.json()
    return local.scores, body


def test_serve_and_the_local_reranker_give_the_same_scores(unnormalized):
    local_scores, body = asyncio.run(_both_scores(unnormalized))
    served = np.full(len(DOCUMENTS), np.nan, dtype=np.float32)
    for item in body["data"]:
        served[item["index"]] = item["relevance_score"]
    np.testing.assert_allclose(served, local_scores, atol=1e-6)
    assert body["model"] == unnormalized.model + RERANK_SUFFIX == LocalCosineReranker(unnormalized).model
    assert {d["index"] for d in body["data"][:2]} == {1, 3}  # the password answers rank first
