"""The job file's checks that concern the world around it: places (schemes, a local cache, an output path
that is not a regular file), the batch tier (a provider that has one, sane batch settings) and the
``[[sink]]`` stores.

Called by ``config.validate`` on a loaded job (typed ``Any`` here: ``config`` imports this module)."""

from __future__ import annotations

from typing import Any

from batchembed.errors import ConfigError
from batchembed.fs.paths import check_output_path

#: Providers whose batch API the batch tier speaks (``openai-compatible``: a server with OpenAI's batch API).
BATCH_PROVIDERS = ("openai", "openai-compatible", "mistral", "voyage")


def check_tier(job: Any) -> None:
    """``model.tier = "batch"``: a provider with a batch API for this task, and sane batch settings."""
    m = job.model
    if m.tier != "batch":
        return
    if m.provider == "fireworks":
        raise ConfigError(
            'model.tier = "batch": Fireworks has no batch API for embeddings or rerank (its batch inference '
            'jobs are chat completions only). Use tier = "online" with Fireworks, or a provider with a batch '
            "tier: openai, mistral, voyage"
        )
    if m.provider not in BATCH_PROVIDERS:
        raise ConfigError(
            f'model.tier = "batch" needs a provider with a batch API ({", ".join(BATCH_PROVIDERS)}); '
            f"{m.provider!r} has none"
        )
    if job.is_rerank and m.provider != "voyage":
        raise ConfigError(
            f'model.tier = "batch" for a rerank job: only Voyage\'s batch API scores pairs; {m.provider} reranks '
            'online only (tier = "online")'
        )
    if m.batch_poll_seconds < 0:
        raise ConfigError(f"model.batch_poll_seconds must be 0 or more, got {m.batch_poll_seconds}")
    if m.batch_resubmits < 0:
        raise ConfigError(f"model.batch_resubmits must be 0 or more, got {m.batch_resubmits}")
    for key, value in (("model.batch_inputs", m.batch_inputs), ("model.batch_queue_inputs", m.batch_queue_inputs)):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")


def check_sinks(job: Any) -> None:
    """``[[sink]]``: each names a table; postgres needs no uri, lancedb needs one; no table twice."""
    from batchembed.fs.location import locate  # (pyarrow.fs: only once a job file is checked)

    seen = set()
    for i, sink in enumerate(job.sink):
        key = f"sink[{i}]"
        if not sink.table:
            raise ConfigError(f'{key}.table is required: the table the vectors are kept in, like "doc_vectors"')
        if job.is_rerank:
            raise ConfigError(f"{key}: sinks hold vectors; a rerank job's output has none")
        if sink.kind == "lancedb":
            if not sink.uri:
                raise ConfigError(
                    f'{key}.uri is required for a lancedb sink: a directory or bucket, like "out/lancedb"'
                )
            locate(sink.uri, field=f"{key}.uri")
        elif sink.uri:
            raise ConfigError(
                f"{key}.uri is for lancedb sinks; a postgres sink connects with the DSN in ${sink.dsn_env}"
            )
        if sink.kind == "lancedb" and sink.index != "none":
            raise ConfigError(f"{key}.index is for postgres sinks (LanceDB builds its indexes when you ask it)")
        if (sink.kind, sink.uri, sink.table) in seen:
            raise ConfigError(f"{key}: the {sink.kind} table {sink.table!r} is listed twice")
        seen.add((sink.kind, sink.uri, sink.table))


def check_locations(job: Any) -> None:
    """Paths and URIs: known schemes only; the SQLite cache on a local disk; a sane lease."""
    from batchembed.fs.location import locate, scheme_of  # (pyarrow.fs: only once a job file is checked)

    locate(job.input.path, field="input.path")
    locate(job.output.path, field="output.path")
    check_output_path(job.output.path)
    cache = job.cache.path
    if cache and scheme_of(cache) not in (None, "file"):
        raise ConfigError(
            f"cache.path {cache!r}: the vector cache is a SQLite database, which needs a local disk "
            "(object stores have no file locking or partial writes); give it a local path"
        )
    if job.storage.lease_seconds < 1:
        raise ConfigError(f"storage.lease_seconds must be at least 1, got {job.storage.lease_seconds}")
