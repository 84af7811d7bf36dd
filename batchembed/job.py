"""Assemble a runnable job from its configuration: provider, token counter, task, runner."""

from __future__ import annotations

from batchembed import catalog
from batchembed.config import JobConfig, resolve_model
from batchembed.memo import VectorMemo
from batchembed.progress import Stats
from batchembed.providers.factory import build
from batchembed.providers.transport import Transport
from batchembed.runner import JobRunner


def text_prefix(job: JobConfig) -> str:
    """What goes before every text: the model's query instruction or document prefix, and ``input.prefix``."""
    cfg = job.input
    return catalog.document_prefix(resolve_model(job).name, cfg.role, cfg.instruction, cfg.prefix)


def check_model(job: JobConfig) -> None:
    """Checks against the model catalogue that need no request (the ``dimensions`` range)."""
    if not (job.model.provider == "local" and job.model.path):
        catalog.check_dimensions(resolve_model(job).name, job.model.dimensions, job.model.provider)


def build_runner(
    job: JobConfig,
    *,
    quiet: bool = False,
    restart: bool = False,
    retry_failed: bool = True,
    accept_model_change: bool = False,
    runner_class: type[JobRunner] = JobRunner,
    transport: Transport | None = None,
    **engine_options,
) -> JobRunner:
    """A ``JobRunner`` (or an engine's subclass, given ``engine_options``) for ``job`` with every part
    chosen from its settings; ``transport`` (tests: an in-process ``HandlerTransport``) carries
    every HTTP request of the run."""
    check_model(job)
    built = build(job, transport)
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
        cache_path = job.cache.path.removeprefix("file://") if job.cache.path else None
        memo = VectorMemo(job.cache.memory_mb << 20, cache_path, namespace)
        task = EmbedTask(
            job,
            model,
            built.provider,
            built.counter,
            prefix=text_prefix(job),
            input_tokens=input_tokens,
            stats=stats,
            memo=memo,
        )
    return runner_class(
        job,
        task,
        built.provider,
        built.counter,
        stats=stats,
        model_identity=built.identity,
        quiet=quiet,
        restart=restart,
        retry_failed=retry_failed,
        accept_model_change=accept_model_change,
        **engine_options,
    )
