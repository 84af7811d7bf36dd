"""The fake provider over real HTTP: an aiohttp app on 127.0.0.1 that hands every request to
:meth:`FakeProvider.handle <batchembed.testing.fakeserver.FakeProvider.handle>`.

:class:`FakeServer` runs it on its own event loop in a background thread, so synchronous test code can
start it, run the ``batchembed`` CLI as a subprocess against ``srv.url`` and then look at what it
received. A scripted ``Reset`` aborts the TCP connection without a byte of answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aiohttp import web

from batchembed.providers.transport import Request, TransportError
from batchembed.testing.fakeserver import FakeProvider


def make_app(provider: FakeProvider) -> web.Application:
    """An aiohttp application answering every route through ``provider.handle``."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        message = Request(request.method, request.path_qs, request.headers, body)
        try:
            answer = await provider.handle(message)
        except TransportError:
            if request.transport is not None:
                request.transport.abort()  # drop the connection without a byte of response
            raise asyncio.CancelledError from None
        headers = dict(answer.headers)
        content_type = headers.pop("Content-Type", None)
        return web.Response(status=answer.status, body=answer.body, headers=headers, content_type=content_type)

    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


class FakeServer(FakeProvider):
    """The fake provider on 127.0.0.1 (port 0), served from a background thread's event loop.

    Use as a context manager (or call :meth:`start` / :meth:`stop`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        """The TCP port, known once started."""

    @property
    def url(self) -> str:
        """Base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        """Start the loop thread and the HTTP server; return once it accepts connections. A server started
        again after :meth:`stop` listens on the same port (a server restarted under a running client)."""
        if self._thread is not None:
            raise RuntimeError("FakeServer already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="FakeServer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Release held requests, close all connections, stop the loop thread."""
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        self.release()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _astart(self) -> None:
        self._runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)  # 0 the first time: any free port
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
