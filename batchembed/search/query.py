"""The query's vector: the text embedded by the job's own model and settings, as a query.

The job is resolved again with ``input.role = "query"``, so a model with a query format gets its query
instruction (Qwen3: ``Instruct: ...\\nQuery:``; nomic: ``search_query: ``) where the documents got
theirs, and everything else (provider, model, ``dimensions``, ``dimensions_by``, ``extra_body``, the
local model's files) is the job's. A text over the job's input limit is cut by the job's own counter,
as a run cuts a row. The model must be the one that wrote the output: a query vector of another model
(or size) would rank rows by chance, so that is refused with what differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchembed.errors import ConfigError
from batchembed.job.config import JobConfig
from batchembed.job.fingerprint import describe_changes
from batchembed.job.resolved import ResolvedJob, resolve
from batchembed.run.assemble import build_counter, build_provider

if TYPE_CHECKING:
    from batchembed.providers.transport import Transport


def query_job(job: JobConfig) -> ResolvedJob:
    """``job`` resolved for a query: the same model and settings, the query role."""
    return resolve(dataclasses.replace(job, input=dataclasses.replace(job.input, role="query")))


def check_same_model(resolved: ResolvedJob, recorded: dict[str, Any], where: str) -> None:
    """Refuse to search an output whose vectors another model (or another size) made."""
    ours = {k: v for k, v in resolved.fingerprint().items() if k != "output.shard_rows"}
    theirs = {key: recorded.get(key) for key in ours}
    changes = describe_changes(theirs, ours)
    if changes:
        raise ConfigError(
            f"{where} was written with other model settings ({'; '.join(changes)}): a query embedded by this "
            "job's model would not be comparable with its vectors; search with the job file that wrote it"
        )


def embed_query(job: JobConfig, text: str, table: Any, transport: Transport | None = None) -> np.ndarray:
    """The unit-length query vector of ``text`` for ``table`` (``scan.Table``: its recorded fingerprint and
    dimension are checked against the job's)."""
    resolved = query_job(job)
    check_same_model(resolved, table.fingerprint, table.uri)
    if not text.strip():
        raise ConfigError("search: the text to search for is empty")
    counter = build_counter(resolved)
    query = resolved.prefix + text
    if int(counter.count(pa.array([query]))[0]) > resolved.input_tokens:
        query = counter.truncate(query, resolved.input_tokens)
    provider = build_provider(resolved, transport)
    vector = np.asarray(asyncio.run(_embed(provider, query)), dtype=np.float32)
    if vector.shape[0] != table.dim:
        raise ConfigError(
            f"{table.uri} holds vectors of {table.dim} dimensions, but the job's model answered {vector.shape[0]}: "
            "search with the job file that wrote the output"
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise ConfigError("the model answered an all-zero or non-finite vector for the search text")
    return vector / norm


async def _embed(provider: Any, text: str) -> np.ndarray:
    try:
        result = await provider.embed([text])
    finally:
        await provider.aclose()
    return result.vectors[0]
