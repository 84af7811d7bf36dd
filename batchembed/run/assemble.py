"""Assemble a runnable job from its resolved settings: API key, provider, token counter, task, runner.

The one place that reads an API key and chooses a provider class for a job; ``batchembed.providers``
holds only the wire shapes. Everything is built from one ``ResolvedJob`` (``batchembed.job.resolved``),
so the provider, the counter, the task and the runner all see the same model, prefix and limits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from batchembed.errors import ConfigError, register_secret
from batchembed.job.config import JobConfig
from batchembed.job.resolved import ResolvedJob, resolve
from batchembed.providers.request_fields import role_options
from batchembed.run.placement import Placement
from batchembed.run.runner import JobRunner
from batchembed.stats import Stats
from batchembed.tasks import Task
from batchembed.tasks.embed import EmbedTask
from batchembed.tasks.memo import VectorMemo
from batchembed.tasks.rerank import RerankTask
from batchembed.tasks.tokens import LocalModelCounter, TokenCounter, make_counter

if TYPE_CHECKING:  # aiohttp is imported only when a provider is built
    from batchembed.providers.transport import Transport


def api_key(job: ResolvedJob) -> str | None:
    """The API key from the configured environment variable; ConfigError when a provider needs one.

    Fireworks and OpenAI need their key; an ``openai-compatible`` server is sent a key only when the
    job names ``model.api_key_env`` (then it must be set), never another provider's key.
    """
    model = job.model
    if not model.api_key_env:
        return None
    key = os.environ.get(model.api_key_env)
    if key:
        register_secret(key)
        return key
    if model.provider in ("fireworks", "openai", "mistral", "voyage") or job.config.model.api_key_env:
        raise ConfigError(
            f"model.api_key_env: environment variable {model.api_key_env} is not set "
            f"(the {model.provider} provider needs an API key)"
        )
    return None


def build_counter(job: ResolvedJob) -> TokenCounter:
    """The job's token counter, without any API key or request (``plan`` uses it alone)."""
    if job.model.provider == "local":
        if job.tokenizer == "estimate":
            return LocalModelCounter(job.local_model)
        return make_counter(job.tokenizer)
    return make_counter(job.tokenizer, job.model.name)


def build_provider(job: ResolvedJob, transport: Transport | None = None) -> Any:
    """The embedder (or, for rerank jobs, the reranker) that answers the job's requests; HTTP providers
    send through ``transport`` (default: a pooled aiohttp session)."""
    # the providers are imported here: the HTTP ones bring aiohttp, which plan, status and verify never need
    config, model = job.config, job.model
    if model.provider == "local":
        if job.is_rerank:
            from batchembed.providers.rerank import LocalCosineReranker

            return LocalCosineReranker(job.local_model)
        return job.local_model
    if job.is_rerank:
        from batchembed.providers.rerank import HTTPReranker

        fmt = config.rerank.format if config.rerank else "auto"
        if fmt == "auto" and model.provider == "fireworks":
            fmt = "fireworks"
        return HTTPReranker(
            provider=model.provider,
            model=model.name,
            base_url=model.base_url or "",
            api_key=api_key(job),
            fmt=fmt,
            timeout=config.model.timeout,
            max_connections=config.limits.in_flight_max,
            extra_body=config.model.extra_body,
            transport=transport,
        )
    from batchembed.providers.openai_compat import OpenAICompatibleEmbedder

    return OpenAICompatibleEmbedder(
        provider=model.provider,
        model=model.name,
        base_url=model.base_url or "",
        api_key=api_key(job),
        dimensions=job.send_dimensions,
        use_base64=job.encoding == "base64",
        timeout=config.model.timeout,
        max_connections=config.limits.in_flight_max,
        fall_back_to_float=job.fall_back_to_float,
        cut_to=job.cut_dimensions,
        extra_body=config.model.extra_body,
        transport=transport,
        role=config.input.role,
    )


def vector_memo(job: ResolvedJob) -> VectorMemo:
    """The embed task's memo of recent vectors, backed by ``[cache] path`` when set.

    Keyed by provider, model, dimensions and the model's identity, so a cache file shared by jobs
    never hands one model's vectors to another; and by ``model.normalize`` where it can change them (any
    mode but "auto", and "auto" with a server-side cut: vectors cached before it existed may be cuts
    that were never normalised)."""
    model, cache, m = job.model, job.config.cache, job.config.model
    facts: tuple = (model.provider, model.name, m.dimensions, *job.identity.values())
    facts += tuple(role_options(model.provider, job.config.input.role).values())  # Voyage: a query's vector differs
    if m.normalize != "auto" or job.send_dimensions is not None:
        facts += (f"normalize={m.normalize}",)
    namespace = "|".join(str(x) for x in facts)
    cache_path = cache.path.removeprefix("file://") if cache.path else None
    return VectorMemo(cache.memory_mb << 20, cache_path, namespace)


def build_task(
    job: ResolvedJob, provider: Any, counter: TokenCounter, *, stats: Stats, memo: VectorMemo | None
) -> Task:
    """The job's task: ``RerankTask`` for rerank jobs (``memo`` unused), else ``EmbedTask``.

    ``provider`` may be ``None`` when only ``prepare`` will be called (``batchembed plan``)."""
    if job.is_rerank:
        return RerankTask(job, provider, counter, stats=stats)
    return EmbedTask(job, provider, counter, stats=stats, memo=memo)


def build_runner(
    job: JobConfig | ResolvedJob,
    *,
    quiet: bool = False,
    restart: bool = False,
    retry_failed: bool = True,
    accept_model_change: bool = False,
    placement: Placement | None = None,
    transport: Transport | None = None,
) -> JobRunner:
    """A ``JobRunner`` for ``job`` (a ``JobConfig``, resolved here, or a ``ResolvedJob``) with every part
    chosen from its settings, run as ``placement`` says (an engine's; default a whole run here);
    ``transport`` (tests: an in-process ``HandlerTransport``) carries every HTTP request of the run."""
    resolved = resolve(job)
    provider = build_provider(resolved, transport)
    counter = build_counter(resolved)
    # the local model is bound by this machine's CPU: progress shows its threads instead of rate limits
    local = resolved.local_model
    stats = Stats(threads=None if local is None else local.threads, compute_times=getattr(local, "compute_times", None))
    memo = vector_memo(resolved) if not resolved.is_rerank else None
    task = build_task(resolved, provider, counter, stats=stats, memo=memo)
    return JobRunner(
        resolved,
        task,
        provider,
        counter,
        stats=stats,
        placement=placement,
        quiet=quiet,
        restart=restart,
        retry_failed=retry_failed,
        accept_model_change=accept_model_change,
    )
