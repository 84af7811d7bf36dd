"""The transport seam: the same requests give the same answers and the same error classes whether they
go over loopback HTTP (``AiohttpTransport``) or to the in-process handler (``HandlerTransport``)."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from batchembed.errors import AuthError, TransientAPIError
from batchembed.providers.http import JSONClient
from batchembed.providers.openai_compat import OpenAICompatibleEmbedder
from batchembed.providers.rerank import HTTPReranker
from batchembed.providers.transport import HandlerTransport, Request, Response, TransportError
from batchembed.testing import Delay, FakeProvider, FakeServer, Reset, Respond, expected_score, expected_vector


@pytest.fixture(params=["in-process", "loopback"])
def fake(request):
    """The fake provider, reached in-process or over 127.0.0.1; yields (fake, transport or None)."""
    if request.param == "in-process":
        provider = FakeProvider(dim=8, api_key="sk-test")
        yield provider, provider.transport()
    else:
        with FakeServer(dim=8, api_key="sk-test") as server:
            yield server, None  # None: the production aiohttp transport


def embedder(fake, transport, **kw) -> OpenAICompatibleEmbedder:
    options = {"dimensions": None, "use_base64": True, "timeout": 5.0, "max_connections": 4}
    options.update(kw)
    return OpenAICompatibleEmbedder(
        provider="openai-compatible",
        model="m",
        base_url=fake.url,
        api_key="sk-test",
        transport=transport,
        **options,
    )


def test_embeddings_the_same_through_either_transport(fake):
    srv, transport = fake

    async def main():
        emb = embedder(srv, transport)
        try:
            return await emb.embed(["a", "b"])
        finally:
            await emb.aclose()

    result = asyncio.run(main())
    np.testing.assert_array_equal(result.vectors, np.stack([expected_vector("a", 8), expected_vector("b", 8)]))
    assert result.prompt_tokens == 4 and result.model == "m"
    assert srv.requests[-1].headers["authorization"] == "Bearer sk-test"
    assert srv.requests[-1].path == "/v1/embeddings"


def test_rerank_the_same_through_either_transport(fake):
    srv, transport = fake
    rr = HTTPReranker(
        provider="fireworks",
        model="r",
        base_url=srv.url,
        api_key="sk-test",
        fmt="fireworks",
        timeout=5.0,
        max_connections=2,
        transport=transport,
    )

    async def main():
        try:
            return await rr.rerank("q", ["x", "y", "z"])
        finally:
            await rr.aclose()

    result = asyncio.run(main())
    assert result.scores.tolist() == pytest.approx([expected_score("q", d) for d in "xyz"])


def test_failures_map_to_the_same_error_classes(fake):
    srv, transport = fake
    srv.script(Reset(), Respond(429, headers={"Retry-After": "3"}), Delay(2.0))

    async def main():
        client = JSONClient(srv.url, "sk-test", timeout=0.5, max_connections=2, transport=transport)
        body = {"model": "m", "input": ["a"]}
        errors = []
        for _ in range(3):
            with pytest.raises(TransientAPIError) as caught:
                await client.post("/embeddings", body)
            errors.append(caught.value)
        srv.rate_limit(rpm=1)
        await client.post("/embeddings", body)
        with pytest.raises(TransientAPIError) as over:
            await client.post("/embeddings", body)
        errors.append(over.value)
        wrong_key = JSONClient(srv.url, "sk-wrong", timeout=5.0, max_connections=2, transport=transport)
        with pytest.raises(AuthError) as denied:
            await wrong_key.post("/embeddings", body)
        await client.aclose()
        await wrong_key.aclose()
        return errors, denied.value

    (reset, limited, slow, over), denied = asyncio.run(main())
    assert str(reset).startswith("connection failed: ")
    assert limited.status == 429 and limited.retry_after == 3.0
    assert over.status == 429 and over.headers["x-ratelimit-limit-requests"] == "1"
    assert str(slow) == "request timed out"
    assert denied.status == 401 and "sk-wrong" not in str(denied)


def test_refused_connection_is_transient():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main():
        client = JSONClient(f"http://127.0.0.1:{port}/v1", None, timeout=5.0, max_connections=1)
        try:
            await client.post("/embeddings", {"input": ["a"]})
        finally:
            await client.aclose()

    with pytest.raises(TransientAPIError, match="connection failed: ClientConnectorError"):
        asyncio.run(main())


def test_handler_transport_lower_cases_headers_and_raises_what_the_handler_raises():
    async def handler(request: Request) -> Response:
        if request.url.endswith("/drop"):
            raise TransportError("ServerDisconnectedError: gone")
        return Response(201, {"X-Thing": "1"}, request.body[::-1])

    async def main():
        transport = HandlerTransport(handler)
        answer = await transport.send(Request("POST", "http://x/echo", {}, b"abc", timeout=1.0))
        with pytest.raises(TransportError):
            await transport.send(Request("POST", "http://x/drop", {}, b""))
        return answer

    answer = asyncio.run(main())
    assert answer == Response(201, {"x-thing": "1"}, b"cba")
