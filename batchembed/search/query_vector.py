"""A search query embedded by a job's own model: the one way batchembed embeds a query (``batchembed search``,
and the README's recipes that search the sinks).

The job file says which model, provider, dimensions and prefix its vectors were made with; a query must
be embedded the same way, with the model's query role where it has one (Qwen3's instruction, nomic's
``search_query:``), or its distances to the documents mean little. The job is resolved again with
``input.role = "query"`` (``query_job``), so everything else (provider, model, ``dimensions``,
``dimensions_by``, ``extra_body``, the local model's files) is the job's; a text over the job's input
limit is cut by the job's own counter, as a run cuts a row; the job's own provider (``build_provider``)
embeds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchembed.job.config import JobConfig, load_job
from batchembed.job.resolved import ResolvedJob, resolve
from batchembed.run.assemble import build_counter, build_provider

if TYPE_CHECKING:
    from batchembed.providers.transport import Transport


def query_job(job: JobConfig) -> ResolvedJob:
    """``job`` resolved for a query: the same model and settings, the query role."""
    return resolve(dataclasses.replace(job, input=dataclasses.replace(job.input, role="query")))


def embed_query(job: str | Path | JobConfig, text: str, transport: Transport | None = None) -> list[float]:
    """``text`` embedded as a query by the model of ``job`` (a job file or a loaded job), L2-normalised
    like the job's own vectors (unless ``model.normalize = "never"``); ``transport``: how HTTP providers
    send (tests: the fake, in-process)."""
    config = job if isinstance(job, JobConfig) else load_job(job)
    resolved = query_job(config)
    query = resolved.prefix + text
    counter = build_counter(resolved)
    if int(counter.count(pa.array([query]))[0]) > resolved.input_tokens:
        query = counter.truncate(query, resolved.input_tokens)
    provider = build_provider(resolved, transport)
    vector = np.asarray(asyncio.run(_embed(provider, query)), np.float32)
    norm = float(np.linalg.norm(vector))
    if config.model.normalize != "never" and norm > 0:
        vector = vector / norm
    return vector.tolist()


async def _embed(provider: Any, text: str) -> Any:
    try:
        result = await provider.embed([text])
    finally:
        await provider.aclose()
    return result.vectors[0]
