"""Assemble a runnable job from its configuration: provider, token counter, task, runner."""

from __future__ import annotations

from batchembed.config import JobConfig, resolve_model
from batchembed.memo import VectorMemo
from batchembed.progress import Stats
from batchembed.providers.factory import build
from batchembed.runner import JobRunner
from batchembed.texts import query_prefix


def build_runner(job: JobConfig, *, quiet: bool = False, restart: bool = False, retry_failed: bool = True) -> JobRunner:
    """A ``JobRunner`` for ``job`` with every part chosen from its settings."""
    built = build(job)
    model = resolve_model(job)
    stats = Stats()
    input_tokens = min(job.limits.input_tokens, built.max_tokens or job.limits.input_tokens)
    if job.is_rerank:
        from batchembed.tasks.rerank import RerankTask

        task = RerankTask(job, model, built.provider, built.counter, input_tokens=input_tokens, stats=stats)
    else:
        from batchembed.tasks.embed import EmbedTask

        namespace = "|".join(
            str(x) for x in (model.provider, model.name, job.model.dimensions, *built.identity.values())
        )
        memo = VectorMemo(job.cache.memory_mb << 20, job.cache.path, namespace)
        task = EmbedTask(
            job,
            model,
            built.provider,
            built.counter,
            prefix=query_prefix(job.input),
            input_tokens=input_tokens,
            stats=stats,
            memo=memo,
        )
    return JobRunner(
        job,
        task,
        built.provider,
        built.counter,
        stats=stats,
        model_identity=built.identity,
        quiet=quiet,
        restart=restart,
        retry_failed=retry_failed,
    )
