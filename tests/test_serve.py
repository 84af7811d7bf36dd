"""``batchembed serve`` as a real subprocess, driven by the official openai client and plain HTTP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest

from batchembed.providers.local import LocalEmbedder

ROOT = Path(__file__).resolve().parents[1]
MAX_BODY = 100_000
MAX_BATCH = 50
TEXTS = [
    "The refund still has not arrived after three weeks.",
    "Great headphones, comfortable and the battery lasts all day.",
    "How do I reset my password?",
    "Electric buses are becoming common in European cities. " * 4,
]


@pytest.fixture(scope="module")
def server():
    """Base URL of a freshly started ``python -m batchembed.serve --port 0``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchembed.serve",
            "--port",
            "0",
            "--threads",
            "2",
            "--max-body-bytes",
            str(MAX_BODY),
            "--max-batch",
            str(MAX_BATCH),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("batchembed serve: listening on http://127.0.0.1:"), (line, proc.stderr.read())
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.stdout.close()
            proc.stderr.close()


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def http(url: str, body: object | bytes | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET (body None) or POST; errors are returned, not raised."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_openai_client_float_and_base64_match_local(client, embedder):
    expected, counts = embedder.encode(TEXTS)
    floats = client.embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2", encoding_format="float")
    assert floats.model == "all-MiniLM-L6-v2"
    assert [d.index for d in floats.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.array([d.embedding for d in floats.data], dtype=np.float32), expected, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == int(counts.sum())

    b64 = client.embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2", encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data])
    np.testing.assert_allclose(decoded, expected, atol=1e-6)

    # Without encoding_format the client asks for base64 and decodes it itself.
    default = client.embeddings.create(input=TEXTS[0], model="sentence-transformers/all-MiniLM-L6-v2")
    np.testing.assert_allclose(np.array(default.data[0].embedding, dtype=np.float32), expected[0], atol=1e-6)


def test_dimensions(client, embedder):
    full, _ = embedder.encode(TEXTS)
    response = client.embeddings.create(input=TEXTS, model="", dimensions=32, encoding_format="float")
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(vectors, full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True), atol=1e-6)


def test_rerank_sorted_top_n_and_return_documents(server):
    documents = [
        "A recipe for banana bread with walnuts.",
        "To reset your password, click 'Forgot password' on the sign-in page.",
        "Our office is closed on public holidays.",
        "Password resets are emailed within five minutes; check your spam folder.",
    ]
    query = "I forgot my password, how can I reset it?"
    status, body, _ = http(f"{server}/v1/rerank", {"model": "all-MiniLM-L6-v2", "query": query, "documents": documents})
    assert status == 200 and body["object"] == "list"
    assert "not a cross-encoder" in body["model"]
    scores = [d["relevance_score"] for d in body["data"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert {d["index"] for d in body["data"][:2]} == {1, 3}
    assert all(d["document"] == documents[d["index"]] for d in body["data"])
    assert body["usage"]["prompt_tokens"] > 0

    status, top, _ = http(
        f"{server}/inference/v1/rerank",
        {"query": query, "documents": documents, "top_n": 2, "return_documents": False, "task": "search"},
    )
    assert status == 200 and len(top["data"]) == 2
    assert [d["index"] for d in top["data"]] == [d["index"] for d in body["data"][:2]]
    assert all("document" not in d for d in top["data"])

    # Jina/Cohere clients send documents as {"text": ...} objects: the same scores
    status, objects, _ = http(
        f"{server}/v1/rerank", {"query": query, "documents": [{"text": d} for d in documents], "top_n": 2}
    )
    assert status == 200, objects
    assert [(d["index"], d["relevance_score"]) for d in objects["data"]] == [
        (d["index"], d["relevance_score"]) for d in body["data"][:2]
    ]


def test_models_health_and_prefixes(server, embedder):
    status, models, _ = http(f"{server}/v1/models")
    assert status == 200 and models["object"] == "list"
    by_type = {m["type"]: m for m in models["data"]}
    assert by_type["embedding"]["id"] == "all-MiniLM-L6-v2" and by_type["embedding"]["dimensions"] == 384
    assert "not a cross-encoder" in by_type["rerank"]["description"]
    assert http(f"{server}/health")[:2] == (200, {"status": "ok"})
    expected, _ = embedder.encode(["hello there"])
    for prefix in ("/inference/v1", "", "/v1"):
        status, body, _ = http(f"{server}{prefix}/embeddings", {"input": "hello there"})
        assert status == 200, (prefix, body)
        np.testing.assert_allclose(body["data"][0]["embedding"], expected[0], atol=1e-6)
    assert http(f"{server}/inference/v1/models")[0] == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input": []}, 400, "non-empty"),
        ({"input": ""}, 400, "empty string"),
        ({"input": ["ok", ""]}, 400, "input[1]"),
        ({"input": [[101, 102]]}, 400, "token-id"),
        ({"input": ["x"] * (MAX_BATCH + 1)}, 400, "at most"),
        ({"input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"input": "x", "dimensions": 385}, 400, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "does not exist"),
        (b"{not json", 400, "JSON"),
        (b'"a string"', 400, "object"),
        ({"input": "x" * (MAX_BODY + 10)}, 413, "exceeds"),
    ],
)
def test_error_shapes(server, body, status, words):
    got, payload, _ = http(f"{server}/v1/embeddings", body)
    assert got == status
    error = payload["error"]
    assert set(error) == {"message", "type", "code"} and words in error["message"]
    if status == 404:
        assert error["code"] == "model_not_found"


def test_rerank_and_routing_errors(server, client):
    assert http(f"{server}/v1/rerank", {"query": "", "documents": ["a"]})[0] == 400
    assert http(f"{server}/v1/rerank", {"query": "q", "documents": []})[0] == 400
    assert http(f"{server}/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0})[0] == 400
    assert http(f"{server}/v1/rerank", {"query": "q", "documents": ["a"], "model": "bge-reranker"})[0] == 404
    status, payload, _ = http(f"{server}/v1/nothing-here")
    assert status == 404 and "error" in payload
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(input="x", model="text-embedding-3-large")


def test_concurrent_requests_are_micro_batched_and_correct(server, embedder):
    texts = [f"Request {i}: my order number {1000 + i} arrived with a cracked screen." for i in range(20)]
    expected, _ = embedder.encode(texts)
    results: dict[int, tuple[np.ndarray, int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(texts))

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            status, body, headers = http(f"{server}/v1/embeddings", {"input": [texts[i]], "model": "all-MiniLM-L6-v2"})
            assert status == 200, body
            results[i] = (
                np.array(body["data"][0]["embedding"], dtype=np.float32),
                int(headers["X-Batchembed-Batch-Inputs"]),
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == list(range(len(texts)))
    for i, (vector, _) in results.items():
        np.testing.assert_allclose(vector, expected[i], atol=1e-5)
    # Twenty single-input requests at once cannot all have run alone: the queue merged some.
    assert max(shared for _, shared in results.values()) > 1
