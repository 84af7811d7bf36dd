"""Each provider's batch API as data: paths, limits, line and creation bodies, statuses, list pages.

OpenAI's Files + Batches API is the shape the others copy (``shared/reference/batch-apis.md``):

| provider | create               | model            | window            | per batch             | queue     |
|----------|----------------------|------------------|-------------------|-----------------------|-----------|
| OpenAI   | ``POST /batches``    | in each line     | ``24h``           | 50,000 inputs, 200 MB | 1M inputs |
| Mistral  | ``POST /batch/jobs`` | on the job       | ``timeout_hours`` | 1M requests           | 1M        |
| Voyage   | ``POST /batches``    | request_params   | ``12h``           | 100,000 inputs        | 1B tokens |

A shape knows nothing of files on disk or of the ledger: it turns our lines into the provider's
JSON and the provider's batch objects into a :class:`BatchView` with one of five plain states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlencode

from batchembed.providers.request_fields import embedding_options, rerank_options

#: Our states for a provider's batch: still running, or how it ended.
PENDING, COMPLETED, EXPIRED, CANCELLED, FAILED = "pending", "completed", "expired", "cancelled", "failed"
#: Error codes of a failed batch that mean "over a quota": wait and create it again (not bad data).
QUOTA_CODES = frozenset({"token_limit_exceeded", "request_limit_exceeded", "rate_limit_exceeded", "quota_exceeded"})
#: Error codes of a line that say it was never answered: submit it again.
RETRY_LINE_CODES = frozenset({"batch_expired", "batch_cancelled", "request_timeout", "timeout", "expired"})


@dataclass(frozen=True)
class BatchView:
    """A provider's batch object in our terms."""

    id: str
    state: str  # PENDING, COMPLETED, EXPIRED, CANCELLED or FAILED
    status: str  # the provider's own word, for messages
    output_file: str | None = None
    error_file: str | None = None
    error_codes: tuple[str, ...] = ()
    error_message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    input_file: str | None = None
    created_at: float | None = None
    done: int = 0  # lines answered so far (as the provider counts them)
    total: int = 0

    @property
    def over_quota(self) -> bool:
        """A failed batch the provider refused for a queue or token quota: create it again later."""
        return self.state == FAILED and any(c in QUOTA_CODES for c in self.error_codes)


class OpenAIShape:
    """OpenAI's ``/v1/files`` + ``/v1/batches`` (also any server speaking it: ``openai-compatible``)."""

    name = "openai"
    batches_path = "/batches"
    max_inputs = 50_000  # embedding inputs across all lines of one batch
    max_bytes = 200_000_000  # one input file
    max_lines = 50_000
    queue_inputs = 1_000_000  # enqueued requests per model (embeddings)
    window = "24h"
    discount = 0.5  # the batch price as a share of the synchronous one
    statuses: ClassVar[dict[str, str]] = {
        "validating": PENDING,
        "in_progress": PENDING,
        "finalizing": PENDING,
        "cancelling": PENDING,
        "completed": COMPLETED,
        "expired": EXPIRED,
        "cancelled": CANCELLED,
        "failed": FAILED,
    }

    def __init__(self, model: str, endpoint: str, params: dict[str, Any]) -> None:
        """``params``: request fields every line carries (dimensions, encoding_format, extra_body)."""
        self.model = model
        self.endpoint = endpoint  # "/v1/embeddings" or "/v1/rerank"
        self.params = params

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSONL line: the request ``body`` (input or query + documents) under ``custom_id``."""
        full = {**self.params, "model": self.model, **body}
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": full}

    def create_body(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """The body that creates a batch of the uploaded ``file_id``, tagged with ``metadata``."""
        return {
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": self.window,
            "metadata": metadata,
        }

    def view(self, doc: dict[str, Any]) -> BatchView:
        """A batch object as returned by create, get and list."""
        status = str(doc.get("status"))
        errors = doc.get("errors") or {}
        data = errors.get("data") if isinstance(errors, dict) else errors
        data = data if isinstance(data, list) else []
        counts = doc.get("request_counts") or {}
        return BatchView(
            id=str(doc["id"]),
            state=self.statuses.get(status, PENDING),
            status=status,
            output_file=doc.get("output_file_id"),
            error_file=doc.get("error_file_id"),
            error_codes=tuple(str(e.get("code")) for e in data if isinstance(e, dict)),
            error_message="; ".join(str(e.get("message")) for e in data if isinstance(e, dict))[:500],
            metadata=dict(doc.get("metadata") or {}),
            input_file=doc.get("input_file_id"),
            created_at=_seconds(doc.get("created_at")),
            done=int(counts.get("completed", 0) or 0) + int(counts.get("failed", 0) or 0),
            total=int(counts.get("total", 0) or 0),
        )

    def get_path(self, batch_id: str) -> str:
        """Where one batch is read."""
        return f"{self.batches_path}/{batch_id}"

    def cancel_path(self, batch_id: str) -> str:
        """Where one batch is cancelled."""
        return f"{self.batches_path}/{batch_id}/cancel"

    def list_path(self, cursor: Any) -> str:
        """One page of the batch list, newest first (``cursor``: None for the first page)."""
        query = {"limit": 100}
        if cursor:
            query["after"] = cursor
        return f"{self.batches_path}?{urlencode(query)}"

    def list_page(self, doc: dict[str, Any], cursor: Any) -> tuple[list[dict[str, Any]], Any]:
        """A page's batch objects and the next page's cursor (None at the end)."""
        items = [d for d in doc.get("data") or [] if isinstance(d, dict)]
        more = bool(doc.get("has_more")) and items
        return items, (doc.get("last_id") or items[-1]["id"]) if more else None


class MistralShape(OpenAIShape):
    """Mistral's ``/v1/batch/jobs``: the model and a timeout on the job, upper-case statuses, numbered pages."""

    name = "mistral"
    batches_path = "/batch/jobs"
    max_inputs = 100_000  # no documented per-batch input cap: kept at Voyage's size so pieces stay reasonable
    max_lines = 1_000_000
    max_bytes = 200_000_000
    queue_inputs = 1_000_000  # pending requests per workspace
    window = "24"
    statuses: ClassVar[dict[str, str]] = {
        "QUEUED": PENDING,
        "RUNNING": PENDING,
        "CANCELLATION_REQUESTED": PENDING,
        "SUCCESS": COMPLETED,
        "TIMEOUT_EXCEEDED": EXPIRED,
        "CANCELLED": CANCELLED,
        "FAILED": FAILED,
    }

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A Mistral line: ``custom_id`` and the body without the model (it is the job's)."""
        return {"custom_id": custom_id, "body": {**self.params, **body}}

    def create_body(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """``input_files``, ``endpoint``, ``model``, ``metadata`` and the job's timeout."""
        return {
            "input_files": [file_id],
            "endpoint": self.endpoint,
            "model": self.model,
            "metadata": metadata,
            "timeout_hours": int(self.window),
        }

    def view(self, doc: dict[str, Any]) -> BatchView:
        """A Mistral job: ``output_file``/``error_file``, request counts at the top level."""
        status = str(doc.get("status"))
        errors = [e for e in doc.get("errors") or [] if isinstance(e, dict)]
        inputs = doc.get("input_files") or [None]
        return BatchView(
            id=str(doc["id"]),
            state=self.statuses.get(status, PENDING),
            status=status,
            output_file=doc.get("output_file"),
            error_file=doc.get("error_file"),
            error_codes=tuple(str(e.get("code", "")) for e in errors),
            error_message="; ".join(str(e.get("message")) for e in errors)[:500],
            metadata=dict(doc.get("metadata") or {}),
            input_file=inputs[0],
            created_at=_seconds(doc.get("created_at")),
            done=int(doc.get("completed_requests") or 0),
            total=int(doc.get("total_requests") or 0),
        )

    def list_path(self, cursor: Any) -> str:
        """Numbered pages of 100 jobs, newest first."""
        return f"{self.batches_path}?{urlencode({'page': int(cursor or 0), 'page_size': 100})}"

    def list_page(self, doc: dict[str, Any], cursor: Any) -> tuple[list[dict[str, Any]], Any]:
        """Jobs of a page; the next page while the total is not reached."""
        items = [d for d in doc.get("data") or [] if isinstance(d, dict)]
        page = int(cursor or 0)
        total = int(doc.get("total") or 0)
        return items, (page + 1 if items and (page + 1) * 100 < total else None)


class VoyageShape(OpenAIShape):
    """Voyage's ``/v1/batches``: OpenAI's files and batch objects, the model in ``request_params``, a
    12-hour window, 100,000 inputs per batch, and a rerank endpoint."""

    name = "voyage"
    max_inputs = 100_000
    max_lines = 100_000
    max_bytes = 1_000_000_000
    queue_inputs = 1_000_000
    window = "12h"
    discount = 0.67

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A Voyage line: ``custom_id`` and the body (model and options are the batch's)."""
        return {"custom_id": custom_id, "body": body}

    def create_body(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """OpenAI's creation body plus ``request_params`` (model and options)."""
        return {**super().create_body(file_id, metadata), "request_params": {**self.params, "model": self.model}}


SHAPES: dict[str, type[OpenAIShape]] = {
    "openai": OpenAIShape,
    "openai-compatible": OpenAIShape,
    "mistral": MistralShape,
    "voyage": VoyageShape,
}


def shape_for(provider: str, model: str, rerank: bool, params: dict[str, Any]) -> OpenAIShape:
    """The batch shape of ``provider`` for an embed or (Voyage only) rerank job."""
    return SHAPES[provider](model, "/v1/rerank" if rerank else "/v1/embeddings", params)


def batch_params(resolved: Any) -> dict[str, Any]:
    """The request options every line (or the batch) carries, in the provider's field names: the same
    fields the online tier sends (``providers.request_fields``), floats unless base64 is asked for
    (base64 in batch is implied by OpenAI's docs, not shown)."""
    job, provider = resolved.config, resolved.model.provider
    if job.is_rerank:
        return {**rerank_options(provider), **(job.model.extra_body or {})}
    return embedding_options(
        provider,
        dimensions=resolved.send_dimensions,
        base64=job.model.encoding == "base64",
        role=job.input.role,
        extra_body=job.model.extra_body,
    )


def job_shape(resolved: Any) -> OpenAIShape:
    """The job's provider batch shape, with the options every line (or the batch) carries."""
    return shape_for(resolved.model.provider, resolved.model.name, resolved.config.is_rerank, batch_params(resolved))


def _seconds(value: Any) -> float | None:
    """A creation time as epoch seconds (OpenAI and Mistral give integers; an ISO string is left out)."""
    return float(value) if isinstance(value, (int, float)) else None


def window_text(window: str) -> str:
    """A shape's completion window as people read it: "24h" and Mistral's "24" (hours) are both "24 h"."""
    hours = window.removesuffix("h")
    return f"{hours} h" if hours.isdigit() else window
