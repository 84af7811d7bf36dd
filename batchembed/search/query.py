"""The query's vector for one output: the text embedded by the job's own model and settings, as a query.

The embedding itself is ``query_vector.embed_query`` (the one way a query is embedded: the query role and
instruction, the job's provider, the text cut to the job's input limit). This module adds what ``search``
needs of it: the model must be the one that wrote the output, since a query vector of another model (or
size) would rank rows by chance, so that is refused with what differs; and the vector is unit length, for
cosine scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from batchembed.errors import ConfigError
from batchembed.job.config import JobConfig
from batchembed.job.fingerprint import describe_changes
from batchembed.job.resolved import ResolvedJob
from batchembed.search.query_vector import embed_query, query_job

if TYPE_CHECKING:
    from batchembed.providers.transport import Transport


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


def query_for(job: JobConfig, text: str, table: Any, transport: Transport | None = None) -> np.ndarray:
    """The unit-length query vector of ``text`` for ``table`` (``scan.Table``: its recorded fingerprint and
    dimension are checked against the job's)."""
    check_same_model(query_job(job), table.fingerprint, table.uri)
    if not text.strip():
        raise ConfigError("search: the text to search for is empty")
    vector = np.asarray(embed_query(job, text, transport), dtype=np.float32)
    if vector.shape[0] != table.dim:
        raise ConfigError(
            f"{table.uri} holds vectors of {table.dim} dimensions, but the job's model answered {vector.shape[0]}: "
            "search with the job file that wrote the output"
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise ConfigError("the model answered an all-zero or non-finite vector for the search text")
    return vector / norm
