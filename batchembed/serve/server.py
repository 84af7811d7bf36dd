"""``batchembed serve``: the local model behind an OpenAI / Fireworks-compatible HTTP API.

Any OpenAI client (or batchembed's own ``openai`` / ``fireworks`` providers) can point at it:

    POST /v1/embeddings   OpenAI shape; ``encoding_format`` float or base64, ``dimensions``
    POST /v1/rerank       Fireworks shape; scores are cosine similarities of embeddings
    GET  /v1/models       what is served, honestly described
    GET  /health          {"status": "ok"}

Every route is also served without ``/v1`` and under ``/inference/v1`` (Fireworks' base URL).
No reranker weights ship on PyPI, so ``/rerank`` ranks documents by the cosine similarity of
their embeddings to the query's: useful, but not a cross-encoder, and the response says so.

Concurrent requests are micro-batched: a queue gathers inputs for a few milliseconds (or until
``MICRO_BATCH_INPUTS``) into one model call, whose rows are split back to each request. Inference
runs in the embedder's worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiohttp import web

from batchembed.exitcodes import ExitCode
from batchembed.providers.cosine import RERANK_SUFFIX, cosine_rerank_scores
from batchembed.providers.local import LocalEmbedder, matryoshka
from batchembed.providers.model_files import DEFAULT_MODEL_ALIASES

#: Gather concurrent requests for at most this long before running the model.
MICRO_BATCH_WAIT = 0.003
#: ... or until this many inputs are waiting.
MICRO_BATCH_INPUTS = 128
#: Response header: how many inputs the model call that answered this request held (micro-batching).
BATCH_HEADER = "X-Batchembed-Batch-Inputs"


class APIErrorResponse(Exception):
    """An error to return to the client in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    return _json({"error": {"message": message, "type": type_, "code": code}}, status)


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects the inputs of concurrent requests into shared model calls.

    One worker task takes the first waiting job, keeps gathering jobs for ``wait`` seconds or until
    ``max_inputs`` inputs, runs them as one ``encode`` call in the embedder's thread, and hands each
    job its rows. While the model runs, new jobs queue up and form the next batch.
    """

    def __init__(self, embedder: LocalEmbedder, wait: float = MICRO_BATCH_WAIT, max_inputs: int = MICRO_BATCH_INPUTS):
        self.embedder, self.wait, self.max_inputs = embedder, wait, max_inputs
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.calls = 0  # number of model calls, for tests and curiosity

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """Native-width vectors and token counts for ``texts``, and the size of the shared batch."""
        if self.task is None:
            self.task = asyncio.create_task(self._worker())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(texts, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].texts)
            deadline = loop.time() + self.wait
            while n < self.max_inputs:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                n += len(job.texts)
            jobs = [j for j in jobs if not j.future.done()]  # clients that went away
            if not jobs:
                continue
            try:
                self.calls += 1
                vectors, counts = await self.embedder.encode_async([t for j in jobs for t in j.texts])
            except Exception as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start, total = 0, len(vectors)
            for job in jobs:
                stop = start + len(job.texts)
                if not job.future.done():
                    job.future.set_result((vectors[start:stop], counts[start:stop], total))
                start = stop

    async def close(self) -> None:
        """Stop the worker task."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Server:
    """The request handlers, bound to one embedder and its micro-batcher."""

    def __init__(self, embedder: LocalEmbedder, max_batch: int = 2048, max_body_bytes: int = 8 << 20):
        self.embedder = embedder
        self.batcher = MicroBatcher(embedder)
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.rerank_model = embedder.model + RERANK_SUFFIX
        self.names = {embedder.model, self.rerank_model}
        if embedder.model in DEFAULT_MODEL_ALIASES:
            self.names.update(DEFAULT_MODEL_ALIASES)

    # -- plumbing ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application with every route under each of the three prefixes."""
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors])
        for prefix in ("/v1", "", "/inference/v1"):
            app.router.add_post(f"{prefix}/embeddings", self.embeddings)
            app.router.add_post(f"{prefix}/rerank", self.rerank)
            app.router.add_get(f"{prefix}/models", self.models)
            app.router.add_get(f"{prefix}/health", self.health)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        await self.batcher.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Turn every failure into OpenAI's error JSON with the right status."""
        try:
            return await handler(request)
        except APIErrorResponse as exc:
            return _error(exc.status, exc.message, exc.type, exc.code)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body exceeds {self.max_body_bytes} bytes", "invalid_request_error", None)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status)
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path}", "invalid_request_error", code)
        except Exception as exc:
            return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None)

    async def _body(self, request: web.Request) -> dict:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise APIErrorResponse(413, f"request body exceeds {self.max_body_bytes} bytes")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise APIErrorResponse(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise APIErrorResponse(400, "request body must be a JSON object")
        return body

    def _model(self, body: dict) -> None:
        model = body.get("model")
        if model is None or model == "":
            return
        if model not in self.names:
            raise APIErrorResponse(
                404,
                f"The model {model!r} does not exist; this server serves {self.embedder.model!r}",
                "invalid_request_error",
                "model_not_found",
            )

    def _texts(self, value: object, name: str, allow_single: bool = True) -> list[str]:
        if allow_single and isinstance(value, str):
            value = [value]
        if not allow_single and isinstance(value, list):  # rerank documents: Jina/Cohere send {"text": ...}
            value = [item["text"] if isinstance(item, dict) and "text" in item else item for item in value]
        if not isinstance(value, list) or not value:
            raise APIErrorResponse(400, f"'{name}' must be a non-empty {'string or ' * allow_single}array of strings")
        if len(value) > self.max_batch:
            raise APIErrorResponse(400, f"'{name}' has {len(value)} items; at most {self.max_batch} are allowed")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise APIErrorResponse(400, f"'{name}[{i}]' must be a string (token-id arrays are not supported)")
            if not item:
                raise APIErrorResponse(400, f"'{name}[{i}]' is an empty string")
        return value

    # -- routes --------------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        """OpenAI ``POST /v1/embeddings``."""
        body = await self._body(request)
        self._model(body)
        texts = self._texts(body.get("input"), "input")
        dims = body.get("dimensions")
        if dims is not None and (
            isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= self.embedder.native_dim
        ):
            raise APIErrorResponse(400, f"'dimensions' must be an integer from 1 to {self.embedder.native_dim}")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise APIErrorResponse(400, "'encoding_format' must be 'float' or 'base64'")
        vectors, counts, shared = await self.batcher.embed(texts)
        vectors = matryoshka(vectors, dims or self.embedder.dimensions, self.embedder.normalized)
        if fmt == "base64":
            le = vectors.astype("<f4", copy=False)
            items = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
        else:
            items = list(vectors)
        tokens = int(counts.sum())
        return _json(
            {
                "object": "list",
                "model": self.embedder.model,
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers={BATCH_HEADER: str(shared)},
        )

    async def rerank(self, request: web.Request) -> web.Response:
        """Fireworks ``POST /v1/rerank``, scored by embedding cosine similarity."""
        body = await self._body(request)
        self._model(body)
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise APIErrorResponse(400, "'query' must be a non-empty string")
        documents = self._texts(body.get("documents"), "documents", allow_single=False)
        top_n = body.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise APIErrorResponse(400, "'top_n' must be a positive integer")
        return_documents = body.get("return_documents", True)
        if not isinstance(return_documents, bool):
            raise APIErrorResponse(400, "'return_documents' must be a boolean")
        vectors, counts, _ = await self.batcher.embed([query, *documents])
        scores = cosine_rerank_scores(vectors)
        order = np.argsort(-scores, kind="stable")[:top_n]
        data = []
        for i in order:
            item: dict[str, object] = {"index": int(i), "relevance_score": float(scores[i])}
            if return_documents:
                item["document"] = documents[i]
            data.append(item)
        tokens = int(counts.sum())
        return _json(
            {
                "object": "list",
                "model": self.rerank_model,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        """OpenAI ``GET /v1/models``: the embedding model and the cosine-similarity "reranker"."""
        common = {"object": "model", "created": 0, "owned_by": "batchembed"}
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.embedder.model,
                        **common,
                        "type": "embedding",
                        "dimensions": self.embedder.dim,
                        "max_input_tokens": self.embedder.max_tokens,
                        "sha256": self.embedder.sha256,
                        "description": "sentence embedding model running locally on onnxruntime",
                    },
                    {
                        "id": self.rerank_model,
                        **common,
                        "type": "rerank",
                        "description": (
                            "/rerank scores are cosine similarities between the query's and each document's "
                            f"{self.embedder.model} embedding; this is not a cross-encoder reranker"
                        ),
                    },
                ],
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        """Liveness probe."""
        return _json({"status": "ok"})


async def _serve(args: argparse.Namespace) -> None:
    embedder = LocalEmbedder(path=args.model, threads=args.threads)
    server = Server(embedder, max_batch=args.max_batch, max_body_bytes=args.max_body_bytes)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"batchembed serve: listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await embedder.aclose()


def command(args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit code 0.

    Configuration problems (bad model directory, checksum mismatch) raise ``ConfigError``.
    """
    asyncio.run(_serve(args))
    return ExitCode.OK
