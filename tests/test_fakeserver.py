"""Tests of the fake embeddings/rerank server itself, with plain urllib and aiohttp clients."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import numpy as np
import pytest

from batchembed.testing import (
    Delay,
    FakeServer,
    Reset,
    Respond,
    expected_score,
    expected_vector,
    token_count,
)


def post(url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple:
    """POST JSON; return (status, headers, parsed JSON or raw bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, hdrs, raw = err.code, err.headers, err.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


def embed(srv: FakeServer, texts: Any, **extra: Any) -> tuple:
    return post(f"{srv.url}/embeddings", {"model": "m", "input": texts, **extra})


@pytest.fixture
def srv():
    with FakeServer(dim=64) as server:
        yield server


def test_expected_vector_is_pure_normalised_and_matryoshka():
    v = expected_vector("hello", 64)
    assert v.dtype == np.float32 and v.shape == (64,)
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-6)
    assert np.array_equal(v, expected_vector("hello", 64))
    assert not np.allclose(v, expected_vector("hello!", 64))
    full = expected_vector("hello", 4096)
    for d in (1, 7, 64, 1024):
        prefix = full[:d] / np.linalg.norm(full[:d])
        assert np.allclose(expected_vector("hello", d), prefix, atol=1e-6)
    s = expected_score("q", "d")
    assert 0.0 <= s < 1.0 and s == expected_score("q", "d") and s != expected_score("q", "e")


def test_float_answer_matches_expected_vector(srv):
    texts = ["alpha", "beta", "gamma δ"]
    status, _, doc = embed(srv, texts, encoding_format="float")
    assert status == 200
    assert doc["object"] == "list" and doc["model"] == "m"
    assert [d["index"] for d in doc["data"]] == [0, 1, 2]
    for item in doc["data"]:
        got = np.asarray(item["embedding"], dtype=np.float32)
        assert np.array_equal(got, expected_vector(texts[item["index"]], 64))
    tokens = sum(token_count(t) for t in texts)
    assert doc["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert srv.received_texts() == texts == srv.all_texts()


def test_single_string_input_and_default_route_without_v1(srv):
    status, _, doc = post(f"http://127.0.0.1:{srv.port}/embeddings", {"model": "m", "input": "solo"})
    assert status == 200 and len(doc["data"]) == 1
    assert srv.requests[0].path == "/embeddings" and srv.requests[0].inputs == ["solo"]


def test_base64_answer_and_strict_base64(srv):
    status, _, doc = embed(srv, ["x", "y"], encoding_format="base64")
    assert status == 200
    for item in doc["data"]:
        got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert np.array_equal(got, expected_vector(["x", "y"][item["index"]], 64))
    srv.base64 = False
    status, _, doc = embed(srv, ["x"], encoding_format="base64")
    assert status == 400 and "encoding_format" in doc["error"]["message"]
    assert embed(srv, ["x"], encoding_format="float")[0] == 200


def test_dimensions_truncate_consistently(srv):
    status, _, doc = embed(srv, ["t"], dimensions=16)
    assert status == 200
    got = np.asarray(doc["data"][0]["embedding"], dtype=np.float32)
    assert np.array_equal(got, expected_vector("t", 16))
    native = expected_vector("t", 64)[:16]
    assert np.allclose(got, native / np.linalg.norm(native), atol=1e-6)
    assert embed(srv, ["t"], dimensions=65)[0] == 400
    assert embed(srv, ["t"], dimensions=0)[0] == 400


def test_reorder_keeps_indices(srv):
    srv.reorder = True
    texts = [f"t{i}" for i in range(5)]
    _, _, doc = embed(srv, texts)
    assert [d["index"] for d in doc["data"]] == [4, 3, 2, 1, 0]
    for item in doc["data"]:
        assert np.array_equal(np.float32(item["embedding"]), expected_vector(texts[item["index"]], 64))


def test_script_runs_in_order_then_normal(srv):
    srv.script(Respond(429, headers={"Retry-After": "0"}), Reset(), Delay(0.3), Respond(503))
    status, headers, doc = embed(srv, ["a"])
    assert status == 429 and headers["Retry-After"] == "0" and doc["error"]["type"] == "rate_limit_error"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        embed(srv, ["b"])
    start = time.monotonic()
    assert embed(srv, ["c"])[0] == 200
    assert time.monotonic() - start >= 0.29
    assert embed(srv, ["d"])[0] == 503
    assert embed(srv, ["e"])[0] == 200
    assert [r.status for r in srv.requests] == [429, 0, 200, 503, 200]
    assert srv.received_texts() == ["c", "e"]
    assert srv.all_texts() == ["a", "b", "c", "d", "e"]
    assert srv.pending_rules == []
    srv.reset_records()
    assert srv.requests == [] and srv.all_texts() == []


def test_respond_with_custom_body(srv):
    srv.script(Respond(502, body="<html>bad gateway</html>"), Respond(200, body={"data": []}))
    status, _, raw = embed(srv, ["a"])
    assert status == 502 and raw == b"<html>bad gateway</html>"
    assert embed(srv, ["a"])[2] == {"data": []}


def test_match_rules_wait_for_their_text(srv):
    srv.script(Respond(500, match="boom"), Respond(429))
    assert embed(srv, ["x"])[0] == 429  # passes the match rule by, takes the next one
    assert embed(srv, ["y"])[0] == 200
    assert embed(srv, ["y", "boom"])[0] == 500
    assert embed(srv, ["boom"])[0] == 200


def test_limits(srv):
    srv.max_inputs = 2
    status, _, doc = embed(srv, ["a", "b", "c"])
    assert status == 413 and "payload too large" in doc["error"]["message"]
    assert embed(srv, ["a", "b"])[0] == 200
    srv.max_inputs = None

    srv.max_body_bytes = 100
    assert embed(srv, ["x" * 200])[0] == 413
    srv.max_body_bytes = None

    srv.max_input_chars = 10
    status, _, doc = embed(srv, ["short", "x" * 11])
    assert status == 400
    assert "maximum context length" in doc["error"]["message"]
    assert doc["error"]["code"] == "context_length_exceeded"
    srv.max_input_chars = None

    srv.poison = {"bad"}
    status, _, doc = embed(srv, ["ok", "bad"])
    assert status == 400 and doc["error"]["code"] == "context_length_exceeded"
    assert embed(srv, ["ok"])[0] == 200

    assert embed(srv, [])[0] == 400
    assert embed(srv, "")[0] == 400
    assert embed(srv, ["a", ""])[0] == 400
    assert post(f"{srv.url}/embeddings", b"not json")[0] == 400
    assert srv.received_texts() == ["a", "b", "ok"]


def test_strict_rejects_unknown_fields(srv):
    assert embed(srv, ["a"], extra_field=1)[0] == 200
    srv.strict = True
    status, _, doc = embed(srv, ["a"], extra_field=1)
    assert status == 400 and "extra_field" in doc["error"]["message"]
    assert embed(srv, ["a"], dimensions=8, encoding_format="float", user="u", normalize=True)[0] == 200


def test_auth(srv):
    srv.api_key = "sk-secret-123"
    status, _, raw = post(f"{srv.url}/embeddings", {"model": "m", "input": ["a"]})
    assert status == 401
    assert "sk-secret-123" not in json.dumps(raw)
    status, _, doc = post(f"{srv.url}/embeddings", {"model": "m", "input": ["a"]}, {"Authorization": "Bearer sk-wrong"})
    assert status == 401 and "sk-" not in doc["error"]["message"]
    status, _, _ = post(
        f"{srv.url}/embeddings", {"model": "m", "input": ["a"]}, {"Authorization": "Bearer sk-secret-123"}
    )
    assert status == 200
    assert srv.requests[-1].headers["authorization"] == "Bearer sk-secret-123"


def test_rate_limit_requests(srv):
    srv.rate_limit(rpm=2)
    s1, h1, _ = embed(srv, ["a"])
    assert s1 == 200
    assert h1["x-ratelimit-limit-requests"] == "2" and h1["x-ratelimit-remaining-requests"] == "1"
    assert h1["x-ratelimit-reset-requests"].endswith("s")
    assert embed(srv, ["b"])[0] == 200
    status, headers, doc = embed(srv, ["c"])
    assert status == 429 and doc["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    srv.rate_limit()
    status, headers, _ = embed(srv, ["c"])
    assert status == 200 and "x-ratelimit-limit-requests" not in headers


def test_rate_limit_tokens_and_window(srv):
    now = [1000.0]
    srv.clock = lambda: now[0]  # the window moves when the test says so, not after a sleep
    srv.rate_limit(tpm=10, window=0.5)
    text = "x" * 16  # 5 tokens
    assert embed(srv, [text])[0] == 200
    status, headers, _ = embed(srv, [text])
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "0"
    status, headers, _ = embed(srv, [text])
    assert status == 429 and headers["Retry-After"] == "1"
    now[0] += 0.49  # still inside the window: still refused
    assert embed(srv, [text])[0] == 429
    now[0] += 0.02  # both accepted requests have left the window
    assert embed(srv, [text])[0] == 200


@pytest.mark.parametrize("fmt", ["fireworks", "cohere", "voyage", "tei"])
def test_rerank_shapes(srv, fmt):
    srv.rerank_format = fmt
    docs = [f"doc {i}" for i in range(6)]
    scores = {i: expected_score("what?", d) for i, d in enumerate(docs)}
    best = sorted(scores, key=lambda i: -scores[i])[:3]
    if fmt == "tei":
        body = {"query": "what?", "texts": docs}
    else:
        body = {"model": "r", "query": "what?", "documents": docs, "return_documents": True}
        body["top_k" if fmt == "voyage" else "top_n"] = 3
    status, _, doc = post(f"{srv.url}/rerank", body)
    assert status == 200
    if fmt == "tei":
        assert isinstance(doc, list) and len(doc) == 6
        assert [d["index"] for d in doc[:3]] == best
        assert all(d["score"] == scores[d["index"]] for d in doc)
        return
    items = doc["results"] if fmt == "cohere" else doc["data"]
    assert [d["index"] for d in items] == best
    assert all(d["relevance_score"] == scores[d["index"]] for d in items)
    texts = [d["document"]["text"] if fmt == "cohere" else d["document"] for d in items]
    assert texts == [docs[i] for i in best]
    assert srv.requests[-1].kind == "rerank" and srv.requests[-1].inputs == docs
    assert srv.received_texts() == []


def test_rerank_fireworks_defaults_scripts_and_limits(srv):
    docs = ["a", "b", "c"]
    srv.script(Respond(429, match="c"))
    assert post(f"{srv.url}/rerank", {"model": "r", "query": "q", "documents": docs})[0] == 429
    status, _, doc = post(f"{srv.url}/rerank", {"model": "r", "query": "q", "documents": docs})
    assert status == 200 and len(doc["data"]) == 3 and all("document" in d for d in doc["data"])
    scores = [d["relevance_score"] for d in doc["data"]]
    assert scores == sorted(scores, reverse=True)
    srv.max_inputs = 2
    assert post(f"{srv.url}/rerank", {"model": "r", "query": "q", "documents": docs})[0] == 413
    body = {"model": "r", "query": "q", "documents": docs, "return_documents": False}
    srv.max_inputs = None
    assert all("document" not in d for d in post(f"{srv.url}/rerank", body)[2]["data"])


def test_hold_release_and_wait_for_requests(srv):
    results: list[int] = []

    def worker(text: str) -> None:
        results.append(embed(srv, [text])[0])

    srv.hold()
    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    srv.wait_for_requests(3, timeout=None)  # raises TimeoutError when fewer arrive within a timeout
    srv.wait_for_held(3, timeout=None)  # all three parked at the hold: none can be answered before release()
    assert srv.held == 3 and srv.in_flight == 3
    assert results == []
    assert all(r.status == 0 for r in srv.requests)
    first = srv.requests[0].inputs
    srv.release(1)  # the oldest one answered, the others still held
    while not results:
        time.sleep(0.01)
    assert results == [200] and srv.held == 2
    assert [r.inputs for r in srv.requests if r.status == 200] == [first]
    srv.release()
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert srv.max_in_flight == 3 and srv.in_flight == 0 and srv.held == 0
    with pytest.raises(TimeoutError):
        srv.wait_for_requests(4, timeout=0.2)


def test_stop_with_held_requests_does_not_hang():
    server = FakeServer(dim=8).start()
    server.hold()
    thread = threading.Thread(target=lambda: embed(server, ["x"]), daemon=True)
    thread.start()
    server.wait_for_requests(1)
    server.stop()  # returns (a hang would be ended by pytest-timeout): the held request is dropped
    thread.join()


def test_aiohttp_keepalive_client_survives_resets_and_concurrency(srv):
    srv.latency = 0.05
    srv.script(Reset(match="t3"))
    texts = [f"t{i}" for i in range(8)]

    async def main() -> list[Any]:
        async with aiohttp.ClientSession() as session:

            async def one(text: str) -> Any:
                try:
                    async with session.post(
                        f"{srv.url}/embeddings",
                        json={"model": "m", "input": [text], "encoding_format": "base64"},
                    ) as resp:
                        return resp.status
                except aiohttp.ClientError as exc:
                    return type(exc).__name__

            return await asyncio.gather(*(one(t) for t in texts))

    statuses = asyncio.run(main())
    assert statuses[3] not in (200,) and isinstance(statuses[3], str)
    assert [s for i, s in enumerate(statuses) if i != 3] == [200] * 7
    assert srv.max_in_flight > 1
    assert sorted(srv.received_texts()) == sorted(t for t in texts if t != "t3")


def test_pool_mode_stats_and_no_records_as_the_benchmarks_use_it():
    """The benchmarks' settings: vectors from a seeded pool by CRC32, counters only, native dimension only."""
    from batchembed.providers.transport import Request
    from batchembed.testing.answers import make_pool, pool_vectors

    fake = FakeServer(dim=8)  # not started: the same handler, called in-process
    fake.pool, fake.keep_records = 16, False
    texts = ["a", "bb", "ccc"]

    async def main():
        ok = await fake.handle(
            Request("POST", "/v1/embeddings", {}, json.dumps({"model": "m", "input": texts}).encode())
        )
        bad = await fake.handle(
            Request("POST", "/v1/embeddings", {}, json.dumps({"model": "m", "input": ["a"], "dimensions": 4}).encode())
        )
        stats = await fake.handle(Request("GET", "/stats?timeline=1", {}))
        return ok, bad, stats

    ok, bad, stats = asyncio.run(main())
    doc = json.loads(ok.body)
    got = np.array([d["embedding"] for d in sorted(doc["data"], key=lambda d: d["index"])], dtype=np.float32)
    np.testing.assert_array_equal(got, pool_vectors(texts, make_pool(8, 16)))
    assert bad.status == 400
    counted = json.loads(stats.body)
    assert counted["requests"] == 2 and counted["ok"] == 1 and counted["bad"] == 1 and counted["inputs"] == 3
    assert counted["tokens_accepted"] == sum(token_count(t) for t in texts) and counted["timeline"][0][1] == 1
    assert fake.requests == []
