"""How a provider's HTTP request reaches a server: the transport seam.

Providers build a :class:`Request` (method, URL, headers, body bytes, timeout) and get a
:class:`Response` (status, lower-cased headers, body bytes) back from a :class:`Transport`; they never
see the library underneath. Two transports exist (the pattern of httpx's ``AsyncBaseTransport`` and
``MockTransport``):

* :class:`AiohttpTransport` -- production: one pooled aiohttp session per job (connection limit,
  keep-alive, per-request timeout), closed by ``aclose``;
* :class:`HandlerTransport` -- in-process: awaits an async handler function with the request, no
  sockets at all. Tests hand it to a whole run (``build_runner(job, transport=...)``) with the fake
  server's handler (``batchembed.testing``), so behaviour tests need neither a port nor a subprocess.

``download`` is ``send`` for a body too large to hold (a batch's output file: 1.5 GB for 50,000 float
vectors of 1,536 dimensions): a 2xx answer's body is handed over in blocks of at most ``DOWNLOAD_BLOCK``
bytes as they arrive.

A request that got no HTTP answer (connection refused or reset, a malformed response) raises
:class:`TransportError`; one that ran out of time raises ``TimeoutError``. ``JSONClient`` turns both
into the same ``TransientAPIError`` whichever transport is used.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

#: The most bytes of a downloaded body handed over at once (``Transport.download``).
DOWNLOAD_BLOCK = 1 << 20


@dataclass(frozen=True)
class Request:
    """One HTTP request as a provider sends it: ``timeout`` is the whole request's budget in seconds."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    timeout: float | None = None


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, headers with lower-cased names, and the body's bytes."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class TransportError(Exception):
    """The request got no HTTP answer (connection refused, reset or cut short); the message names why.

    ``why`` classifies it for whoever decides what to tell the user: ``refused``, ``dns``, ``tls``,
    ``connect`` (another failure to connect) or ``reset`` (the default: the connection dropped)."""

    def __init__(self, message: str, why: str = "reset") -> None:
        super().__init__(message)
        self.why = why


#: Seconds to open a connection at most (within the request's own timeout): a connection that takes
#: longer is to a host that does not answer, which a run should learn in seconds, not minutes.
CONNECT_TIMEOUT = 10.0


def why_failed(exc: BaseException) -> str:
    """How an aiohttp request failed without an answer: refused, dns, tls, connect or reset."""
    if isinstance(exc, aiohttp.ClientSSLError) or isinstance(getattr(exc, "os_error", None), ssl.SSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "connect"
    return "reset"


class Transport(Protocol):
    """Sends a request and returns its answer; raises ``TransportError`` or ``TimeoutError`` otherwise."""

    async def send(self, request: Request) -> Response:
        """Send ``request`` and read the whole answer."""
        ...

    async def download(self, request: Request, write: Callable[[bytes], object]) -> Response:
        """Send ``request``; a 2xx answer's body goes to ``write`` block by block (at most ``DOWNLOAD_BLOCK``
        bytes each) as it arrives and is never held whole (the ``Response`` carries no body); any other
        answer is read whole, as ``send`` reads it (an error's message)."""
        ...

    async def aclose(self) -> None:
        """Release connections (a no-op for transports holding none)."""
        ...


class AiohttpTransport:
    """Production transport: one pooled aiohttp session, at most ``max_connections`` connections."""

    def __init__(self, max_connections: int, keepalive_timeout: float = 60.0) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            connect = CONNECT_TIMEOUT if seconds is None else min(seconds, CONNECT_TIMEOUT)
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds, sock_connect=connect)
        return timeout

    async def send(self, request: Request) -> Response:
        """Send over the pooled session; connection failures become ``TransportError``."""
        return await self._exchange(request, None)

    async def download(self, request: Request, write: Callable[[bytes], object]) -> Response:
        """Like ``send``, a 2xx body streamed to ``write`` in blocks (``Transport.download``)."""
        return await self._exchange(request, write)

    async def _exchange(self, request: Request, write: Callable[[bytes], object] | None) -> Response:
        try:
            async with self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=self._timeout(request.timeout),
            ) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                if write is None or not 200 <= resp.status < 300:
                    return Response(resp.status, headers, await resp.read())
                async for block in resp.content.iter_chunked(DOWNLOAD_BLOCK):
                    write(block)
                return Response(resp.status, headers)
        except TimeoutError:
            raise  # aiohttp's ServerTimeoutError is a ClientError too: it stays a timeout
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", why_failed(exc)) from None

    async def aclose(self) -> None:
        """Close the pooled session (a later ``send`` opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[Request], Awaitable[Response]]
"""An in-process server: an async function from a request to its answer."""


class HandlerTransport:
    """In-process transport: each request awaits ``handler(request)`` on the caller's event loop.

    The request's ``timeout`` is enforced like on the network (``TimeoutError``), so a slow handler
    behaves as a slow server. The handler raises ``TransportError`` to act as a dropped connection.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def send(self, request: Request) -> Response:
        """Hand ``request`` to the handler; lower-case its answer's header names."""
        async with asyncio.timeout(request.timeout):
            response = await self.handler(request)
        return Response(response.status, {k.lower(): v for k, v in response.headers.items()}, response.body)

    async def download(self, request: Request, write: Callable[[bytes], object]) -> Response:
        """``send``, a 2xx body handed to ``write`` in ``DOWNLOAD_BLOCK`` blocks (as the network would)."""
        response = await self.send(request)
        if not 200 <= response.status < 300:
            return response
        body = memoryview(response.body)
        for at in range(0, len(body), DOWNLOAD_BLOCK):
            write(body[at : at + DOWNLOAD_BLOCK])
        return Response(response.status, response.headers)

    async def aclose(self) -> None:
        """Nothing to release: the handler belongs to whoever made this transport."""
