"""A fake of the providers' batch APIs (files + batches) in front of the fake embeddings/rerank provider.

:class:`FakeBatchProvider` answers in-process (``fake.transport()``), :class:`FakeBatchServer` over
127.0.0.1 for subprocesses (the kill tests). Both speak OpenAI's shape by default, or Mistral's or
Voyage's (``shape="mistral"`` / ``"voyage"``):

* ``POST /files`` (multipart), ``GET /files/{id}/content``;
* ``POST /batches`` (Mistral: ``/batch/jobs``), ``GET /batches/{id}``, ``POST /batches/{id}/cancel``,
  and the list ``GET /batches`` paged newest first (``limit``/``after``; Mistral ``page``/``page_size``).

A batch moves one state per ``GET`` of it (validating -> in_progress -> finalizing -> completed), so
a test advances batches by polling them, without a clock; ``hold_batches = True`` freezes them. When
a batch ends, every line is answered by the embeddings/rerank fake (a poisoned text gets its line a
400), and the output file lists the lines in reversed order. ``hold()`` parks the batch routes'
requests too, unanswered until ``release()``. Knobs: ``expire_next`` (lines that
expire instead), ``refuse_creations`` (429s at creation), ``quota_failures`` (batches created then
failed with ``token_limit_exceeded``), ``queue_limit`` (inputs enqueued at once), ``max_inputs``
(per batch), ``page_size`` (of the list). Records: :attr:`created` (every batch created),
:attr:`inputs_billed` (inputs of answered lines) and :attr:`batch_calls` (every call of the batch API:
method and path).
"""

from __future__ import annotations

import email.parser
import itertools
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from batchembed.providers.transport import Request, Response
from batchembed.testing.answers import Reply, error_body
from batchembed.testing.fakeserver import FakeProvider
from batchembed.testing.loopback import FakeServer

STATES = {
    "openai": ["validating", "in_progress", "finalizing", "completed"],
    "voyage": ["validating", "in_progress", "finalizing", "completed"],
    "mistral": ["QUEUED", "RUNNING", "RUNNING", "SUCCESS"],
}
ENDED = {
    "openai": {"expired": "expired", "cancelled": "cancelled", "failed": "failed", "cancelling": "cancelling"},
    "mistral": {
        "expired": "TIMEOUT_EXCEEDED",
        "cancelled": "CANCELLED",
        "failed": "FAILED",
        "cancelling": "CANCELLATION_REQUESTED",
    },
}
ENDED["voyage"] = ENDED["openai"]


def _json(status: int, obj: Any) -> Response:
    return Response(status, {"Content-Type": "application/json"}, orjson.dumps(obj))


class FakeBatchProvider(FakeProvider):
    """The fake embeddings/rerank provider plus a batch API (see the module docstring)."""

    def __init__(self, *args: Any, shape: str = "openai", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shape = shape
        self.hold_batches = False
        self.expire_next = 0
        self.refuse_creations = 0
        self.quota_failures = 0
        self.queue_limit: int | None = None
        self.max_inputs: int | None = None
        self.page_size: int | None = None
        self.drop_metadata = False  # answer batch objects without their metadata (found by input file instead)
        self.wall = time.time
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self.created: list[dict[str, Any]] = []
        self.inputs_billed = 0
        self.lines_billed = 0
        self.billed_texts: list[str] = []
        self.batch_calls: list[tuple[str, str]] = []  # (method, path) of every files/batches call
        self._ids = itertools.count(1)
        self._batch_lock = threading.Condition()

    @property
    def batches_path(self) -> str:
        return "/batch/jobs" if self.shape == "mistral" else "/batches"

    async def handle(self, request: Request) -> Response:
        """Batch routes here; everything else to the embeddings/rerank fake."""
        split = urlsplit(request.url)
        path = split.path.removeprefix("/v1") if split.path.startswith("/v1/") else split.path
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        base = self.batches_path
        if path == "/files" or path.startswith(("/files/", base)):
            self.batch_calls.append((request.method, path))
            await self._wait_while_held()  # ``hold()`` parks the batch routes too (a poll the server never answers)
        try:
            with self._batch_lock:
                if path == "/files" and request.method == "POST":
                    return self._upload(request)
                if path.startswith("/files/") and path.endswith("/content") and request.method == "GET":
                    return self._content(path.split("/")[2])
                if path == base and request.method == "POST":
                    return self._create(orjson.loads(request.body or b"{}"))
                if path == base and request.method == "GET":
                    return self._list(query)
                if path.startswith(base + "/"):
                    rest = path[len(base) + 1 :].split("/")
                    if len(rest) == 1 and request.method == "GET":
                        return self._get(rest[0])
                    if len(rest) == 2 and rest[1] == "cancel" and request.method == "POST":
                        return self._cancel(rest[0])
        except Reply as reply:
            return _json(reply.status, error_body(reply.status, reply.message, reply.code))
        return await super().handle(request)

    # ------------------------------------------------------------------------------------ files

    def _upload(self, request: Request) -> Response:
        head = f"Content-Type: {request.headers.get('Content-Type') or request.headers.get('content-type')}\r\n\r\n"
        message = email.parser.BytesParser().parsebytes(head.encode() + request.body)
        fields = {}
        for part in message.get_payload():
            fields[part.get_param("name", header="content-disposition")] = (
                part.get_filename(),
                part.get_payload(decode=True),
            )
        if "file" not in fields:
            raise Reply(400, "no file in the upload")
        name, data = fields["file"]
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {"id": file_id, "bytes": len(data), "filename": name, "data": data}
        return _json(200, {"id": file_id, "object": "file", "bytes": len(data), "filename": name, "purpose": "batch"})

    def _content(self, file_id: str) -> Response:
        if file_id not in self.files:
            raise Reply(404, f"no file {file_id}")
        return Response(200, {"Content-Type": "application/octet-stream"}, self.files[file_id]["data"])

    # ---------------------------------------------------------------------------------- batches

    def _create(self, body: dict[str, Any]) -> Response:
        if self.refuse_creations > 0:
            self.refuse_creations -= 1
            raise Reply(429, "Too many batches being created", "rate_limit_exceeded")
        file_id = body.get("input_file_id") or (body.get("input_files") or [None])[0]
        if file_id not in self.files:
            raise Reply(400, f"input file {file_id} does not exist")
        lines = [orjson.loads(x) for x in self.files[file_id]["data"].splitlines() if x.strip()]
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids):
            raise Reply(400, "duplicate custom_id in the input file")
        inputs = sum(_n_inputs(line.get("body", {})) for line in lines)
        if self.max_inputs is not None and inputs > self.max_inputs:
            raise Reply(400, f"{inputs} inputs in one batch, over the limit of {self.max_inputs}")
        model = body.get("model") or (body.get("request_params") or {}).get("model")
        batch_id = f"batch_{next(self._ids)}"
        enqueued = sum(b["inputs"] for b in self.batches.values() if b["phase"] < 3 and not b["ended"])
        quota = self.quota_failures > 0 or (self.queue_limit is not None and enqueued + inputs > self.queue_limit)
        if self.quota_failures > 0:
            self.quota_failures -= 1
        batch = {
            "id": batch_id,
            "file": file_id,
            "metadata": dict(body.get("metadata") or {}),
            "endpoint": body.get("endpoint"),
            "model": model,
            "params": dict(body.get("request_params") or {}),
            "lines": lines,
            "inputs": inputs,
            "phase": 0,
            "ended": "failed" if quota else None,
            "errors": [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached"}] if quota else [],
            "created_at": int(self.wall()),
            "output": None,
            "error": None,
            "done": 0,
        }
        self.batches[batch_id] = batch
        self._batch_lock.notify_all()
        self.created.append(
            {"id": batch_id, "metadata": batch["metadata"], "inputs": inputs, "quota": quota, "enqueued": enqueued}
        )
        return _json(200, self._view(batch))

    def _get(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        if not self.hold_batches and not batch["ended"]:
            batch["phase"] += 1
            if batch["phase"] >= 3:
                self._finish(batch, "completed")
        elif batch["ended"] == "cancelling" and not self.hold_batches:
            self._finish(batch, "cancelled")
        return _json(200, self._view(batch))

    def _cancel(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        if not batch["ended"]:
            batch["ended"] = "cancelling"
        return _json(200, self._view(batch))

    def _list(self, query: dict[str, str]) -> Response:
        ordered = list(reversed(self.batches.values()))
        if self.shape == "mistral":
            size = self.page_size or int(query.get("page_size", 100))
            page = int(query.get("page", 0))
            chunk = ordered[page * size : (page + 1) * size]
            return _json(200, {"data": [self._view(b) for b in chunk], "total": len(ordered), "object": "list"})
        size = self.page_size or int(query.get("limit", 20))
        after = query.get("after")
        start = 0
        if after:
            start = next((i + 1 for i, b in enumerate(ordered) if b["id"] == after), len(ordered))
        chunk = ordered[start : start + size]
        return _json(
            200,
            {
                "object": "list",
                "data": [self._view(b) for b in chunk],
                "first_id": chunk[0]["id"] if chunk else None,
                "last_id": chunk[-1]["id"] if chunk else None,
                "has_more": start + size < len(ordered),
            },
        )

    def _batch(self, batch_id: str) -> dict[str, Any]:
        if batch_id not in self.batches:
            raise Reply(404, f"No batch found with id '{batch_id}'")
        return self.batches[batch_id]

    def _finish(self, batch: dict[str, Any], how: str) -> None:
        """Answer the lines (or not): the output file, the error file, the final status."""
        out, err = [], []
        ended = how
        for line in batch["lines"]:
            cid = line.get("custom_id")
            if how == "cancelled":
                err.append({"custom_id": cid, "response": None, "error": {"code": "batch_cancelled", "message": "x"}})
                continue
            if self.expire_next > 0:
                self.expire_next -= 1
                ended = "expired"
                err.append({"custom_id": cid, "response": None, "error": {"code": "batch_expired", "message": "x"}})
                continue
            status, body = self._answer_line(batch, line.get("body") or {})
            entry = {
                "id": f"req_{next(self._ids)}",
                "custom_id": cid,
                "response": {"status_code": status, "body": body},
            }
            entry["error"] = None
            (out if status == 200 else err).append(entry)
            if status == 200:
                self.lines_billed += 1
                self.inputs_billed += _n_inputs(line["body"])
                self.billed_texts.extend(_texts(line["body"]))
        batch["ended"] = ended
        batch["done"] = len(out)
        if out:
            batch["output"] = self._store(b"\n".join(orjson.dumps(x) for x in reversed(out)))  # out of order
        if err:
            batch["error"] = self._store(b"\n".join(orjson.dumps(x) for x in err))

    def _answer_line(self, batch: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        full = {**batch["params"], **body}
        full.setdefault("model", batch["model"])
        saved_format, self.embed_format = self.embed_format, self.shape  # the provider's field names
        try:
            if "query" in full:
                saved, self.rerank_format = self.rerank_format, "voyage"
                try:
                    doc, _ = self._rerank(full)
                finally:
                    self.rerank_format = saved
                return 200, doc
            payload, _ = self._embeddings(full)
            return 200, orjson.loads(payload)
        except Reply as reply:
            return reply.status, error_body(reply.status, reply.message, reply.code)
        finally:
            self.embed_format = saved_format

    def _store(self, data: bytes) -> str:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {"id": file_id, "bytes": len(data), "filename": "results.jsonl", "data": data}
        return file_id

    def _view(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch object in the provider's shape."""
        phase = min(batch["phase"], 3)
        if batch["ended"] == "completed":
            status = STATES[self.shape][3]
        else:
            status = ENDED[self.shape][batch["ended"]] if batch["ended"] else STATES[self.shape][phase]
        total = len(batch["lines"])
        if self.shape == "mistral":
            return {
                "id": batch["id"],
                "object": "batch",
                "input_files": [batch["file"]],
                "endpoint": batch["endpoint"],
                "model": batch["model"],
                "metadata": {} if self.drop_metadata else batch["metadata"],
                "status": status,
                "output_file": batch["output"],
                "error_file": batch["error"],
                "errors": batch["errors"],
                "created_at": batch["created_at"],
                "total_requests": total,
                "completed_requests": batch["done"],
                "succeeded_requests": batch["done"],
                "failed_requests": 0,
            }
        return {
            "id": batch["id"],
            "object": "batch",
            "endpoint": batch["endpoint"],
            "input_file_id": batch["file"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch["output"],
            "error_file_id": batch["error"],
            "errors": {"object": "list", "data": batch["errors"]} if batch["errors"] else None,
            "created_at": batch["created_at"],
            "metadata": {} if self.drop_metadata else batch["metadata"],
            "request_counts": {"total": total, "completed": batch["done"], "failed": 0},
        }

    # ---------------------------------------------------------------------------------- helpers

    def finish_all(self, ids: list[str] | None = None) -> None:
        """End every running batch (or those of ``ids``) now: its next poll sees it completed."""
        with self._batch_lock:
            for batch in self.batches.values():
                if not batch["ended"] and (ids is None or batch["id"] in ids):
                    batch["phase"] = 3
                    self._finish(batch, "completed")

    def wait_for_batches(self, n: int, timeout: float | None = 30) -> None:
        """Block until ``n`` batches were created; TimeoutError otherwise."""
        with self._batch_lock:
            if not self._batch_lock.wait_for(lambda: len(self.batches) >= n, timeout=timeout):
                raise TimeoutError(f"expected {n} batches within {timeout}s, got {len(self.batches)}")

    def running(self) -> int:
        """Batches not ended yet."""
        with self._batch_lock:
            return sum(1 for b in self.batches.values() if not b["ended"] or b["ended"] == "cancelling")


def _n_inputs(body: dict[str, Any]) -> int:
    return len(_texts(body))


def _texts(body: dict[str, Any]) -> list[str]:
    if "documents" in body:
        return list(body.get("documents") or [])
    inp = body.get("input")
    return [inp] if isinstance(inp, str) else list(inp or [])


class FakeBatchServer(FakeBatchProvider, FakeServer):
    """:class:`FakeBatchProvider` on 127.0.0.1 (a context manager, like ``FakeServer``)."""
