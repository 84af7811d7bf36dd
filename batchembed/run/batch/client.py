"""The batch API over the job's transport: upload a file, create / read / list / cancel batches, download.

Every call goes through the same transport as the online tier (``providers/transport.py``), so tests
answer it in-process (``batchembed.testing.batchapi``) or over loopback. Failures are classified by
the online tier's policy (``retry.classify``): transient ones (timeouts, resets, 5xx) are retried here
with backoff, a 429 at creation is handed up as :class:`QueueFull` ("wait and create it again"),
anything else (401, 404 model...) is the job's failure. A call that gets no answer at all is the run's
``ServerWatch``'s (``sending/outage``) to judge, as for the online tier: named at once before the first
answer and given up on after ``limits.connect_timeout``; waited for during an outage, without using up
``max_retries``, until ``limits.outage_seconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import IO, Any

import aiohttp
import orjson

from batchembed import __version__
from batchembed.errors import APIError, AuthError, MalformedResponse, NoAnswer, TransientAPIError, redact
from batchembed.providers.http import error_message
from batchembed.providers.retry import backoff, classify
from batchembed.providers.transport import AiohttpTransport, Request, Transport, TransportError
from batchembed.run.assemble import api_key
from batchembed.run.batch.shapes import BatchView, OpenAIShape
from batchembed.sending.outage import ServerWatch


class QueueFull(Exception):
    """The provider refused to create a batch now (429, or its queue is full): create it again later."""


class _Sink:
    """Collects what aiohttp's multipart writer writes (it writes to a stream)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


async def multipart_file(filename: str, data: bytes, purpose: str = "batch") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``purpose`` and one file: (bytes, content type)."""
    with aiohttp.MultipartWriter("form-data") as form:
        part = form.append(purpose)
        part.set_content_disposition("form-data", name="purpose")
        part = form.append(data, {"Content-Type": "application/jsonl"})
        part.set_content_disposition("form-data", name="file", filename=filename)
    sink = _Sink()
    await form.write(sink)
    return b"".join(sink.parts), f"multipart/form-data; boundary={form.boundary}"


class BatchClient:
    """One provider's batch endpoints under ``base_url`` (``.../v1``), with ``shape`` saying how they look."""

    def __init__(
        self,
        shape: OpenAIShape,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        watch: ServerWatch | None = None,
    ) -> None:
        self.shape = shape
        self.watch = watch
        self.base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": f"batchembed/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._retries = max_retries
        self._transport: Transport = transport if transport is not None else AiohttpTransport(4)
        self._sleep = sleep
        self.calls = 0  # HTTP requests sent (for the report)

    async def _send(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None, into: IO[bytes] | None = None
    ) -> bytes:
        """One call, transient failures retried; returns the 2xx body or raises the classified error.

        ``into``: the 2xx body is written there as it arrives instead (emptied before each try)."""
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        url = self.base_url + path
        # a download of a large output file gets longer than one embeddings request
        timeout = self._timeout * (10 if method == "GET" and path.endswith("/content") else 1)
        attempt = away = 0
        while True:
            self.calls += 1
            request = Request(method, url, headers, body, timeout)
            try:
                if into is None:
                    resp = await self._transport.send(request)
                else:
                    into.seek(0)
                    into.truncate()  # a download cut short is started again from its first byte
                    resp = await self._transport.download(request, into.write)
            except TimeoutError:
                error: APIError = NoAnswer(f"{method} {path}: timed out", "timeout", url)
            except TransportError as exc:
                error = NoAnswer(redact(f"{method} {path}: connection failed: {exc}"), exc.why, url)
            else:
                if 200 <= resp.status < 300:
                    if self.watch is not None:
                        self.watch.answered()
                    return resp.body
                message, code = error_message(resp.body)
                error = classify(resp.status, redact(f"HTTP {resp.status} from {url}: {message}"), code, resp.headers)
                if resp.status == 429 and method == "POST" and path == self.shape.batches_path:
                    raise QueueFull(str(error))
            if isinstance(error, AuthError) and self.watch is not None:
                raise self.watch.refused(error)
            ride = self.watch.failed(error, self, away) if self.watch is not None else None
            if ride is not None:  # the server cannot be reached: waited for (``expired``: the run is stopping)
                if self.watch.expired is not None:
                    raise error
                away += 1
                await self._sleep(ride)
                continue
            away = 0
            if not isinstance(error, TransientAPIError) or attempt >= self._retries:
                raise error
            await self._sleep(backoff(attempt, error.retry_after))
            attempt += 1

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        raw = await self._send(method, path, orjson.dumps(body) if body is not None else b"", "application/json")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"{method} {path}: answer is not JSON: {raw[:200]!r}") from None
        if not isinstance(doc, dict):
            raise MalformedResponse(f"{method} {path}: answer is not an object: {raw[:200]!r}")
        return doc

    async def upload(self, filename: str, data: bytes) -> str:
        """Upload one JSONL input file (``purpose=batch``); its file id."""
        body, content_type = await multipart_file(filename, data)
        raw = await self._send("POST", "/files", body, content_type)
        doc = orjson.loads(raw)
        return str(doc["id"])

    async def create(self, file_id: str, metadata: dict[str, str]) -> BatchView:
        """Create a batch of ``file_id`` tagged with ``metadata`` (``QueueFull``: try again later)."""
        body = self.shape.create_body(file_id, metadata)
        return self.shape.view(await self._json("POST", self.shape.batches_path, body))

    async def get(self, batch_id: str) -> BatchView:
        """A batch as it is now."""
        return self.shape.view(await self._json("GET", self.shape.get_path(batch_id)))

    async def cancel(self, batch_id: str) -> BatchView:
        """Ask the provider to cancel a batch (finished lines stay in its output)."""
        return self.shape.view(await self._json("POST", self.shape.cancel_path(batch_id), {}))

    async def find(self, match: Callable[[BatchView], bool], since: float | None) -> BatchView | None:
        """The newest batch ``match`` accepts, scanning the list endpoint page by page (newest first) back
        to ``since`` (epoch seconds; a margin is the caller's), or None. There is no server-side filter."""
        cursor = None
        while True:
            doc = await self._json("GET", self.shape.list_path(cursor))
            items, cursor = self.shape.list_page(doc, cursor)
            for item in items:
                view = self.shape.view(item)
                if match(view):
                    return view
                if since is not None and view.created_at is not None and view.created_at < since:
                    return None
            if cursor is None:
                return None

    async def download(self, file_id: str, into: IO[bytes]) -> None:
        """A file's content (an output or error file) written to ``into`` as it arrives: never held whole
        (an output file of 50,000 float vectors of 1,536 dimensions is about 1.5 GB)."""
        await self._send("GET", f"/files/{file_id}/content", into=into)

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._transport.aclose()


def job_client(
    resolved: Any,
    shape: OpenAIShape,
    transport: Any,
    watch: ServerWatch | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BatchClient:
    """The batch API client for the job (its key read where every key is read: ``job.api_key``); ``sleep``:
    how it waits between tries (the run's, which a stop ends at once)."""
    job = resolved.config
    return BatchClient(
        shape,
        resolved.model.base_url or "",
        api_key(resolved),
        timeout=job.model.timeout,
        max_retries=job.limits.max_retries,
        transport=transport,
        watch=watch,
        sleep=sleep,
    )
