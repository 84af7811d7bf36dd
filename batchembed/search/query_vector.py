"""A search query embedded by a job's own model, for searching its sinks (the README's recipes).

The job file says which model, provider, dimensions and prefix its vectors were made with; a query must
be embedded the same way, with the model's query role where it has one (Qwen3's instruction, nomic's
``search_query:``), or its distances to the documents mean little. This builds the job's own provider
(``job.build_provider``) with ``input.role = "query"`` and embeds one text.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from batchembed.job.config import JobConfig, load_job
from batchembed.job.resolved import resolve
from batchembed.run.assemble import build_provider


def embed_query(job: str | Path | JobConfig, text: str, transport=None) -> list[float]:
    """``text`` embedded as a query by the model of ``job`` (a job file or a loaded job), L2-normalised
    like the job's own vectors; ``transport``: how HTTP providers send (tests: the fake, in-process)."""
    config = job if isinstance(job, JobConfig) else load_job(job)
    config = dataclasses.replace(config, input=dataclasses.replace(config.input, role="query"))
    resolved = resolve(config)
    provider = build_provider(resolved, transport)

    async def one():
        try:
            return await provider.embed([resolved.prefix + text])
        finally:
            await provider.aclose()

    vector = np.asarray(asyncio.run(one()).vectors[0], np.float32)
    norm = float(np.linalg.norm(vector))
    if config.model.normalize != "never" and norm > 0:
        vector = vector / norm
    return vector.tolist()
