"""Build the embedder and token counter a job asks for. The one place that reads the API key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchembed.config import JobConfig, resolve_model
from batchembed.errors import ConfigError, register_secret
from batchembed.providers.base import Embedder
from batchembed.providers.transport import Transport
from batchembed.tokens import TokenCounter, make_counter


@dataclass
class Built:
    """An embedder with what the runner needs to know about it."""

    provider: Embedder  # or a reranker, for rerank jobs
    counter: TokenCounter
    identity: dict[str, Any]  # extra fingerprint facts (e.g. the local model's sha256)
    max_tokens: int | None  # the model's own input limit, when known


def api_key(job: JobConfig) -> str | None:
    """The API key from the configured environment variable; ConfigError when a provider needs one.

    Fireworks and OpenAI need their key; an ``openai-compatible`` server is sent a key only when the
    job names ``model.api_key_env`` (then it must be set), never another provider's key.
    """
    model = resolve_model(job)
    if not model.api_key_env:
        return None
    key = os.environ.get(model.api_key_env)
    if key:
        register_secret(key)
        return key
    if model.provider in ("fireworks", "openai") or job.model.api_key_env:
        raise ConfigError(
            f"model.api_key_env: environment variable {model.api_key_env} is not set "
            f"(the {model.provider} provider needs an API key)"
        )
    return None


def counter_for(job: JobConfig) -> tuple[TokenCounter, int | None]:
    """The job's token counter and the model's input limit, without any API key or request."""
    if resolve_model(job).provider == "local":
        built = build(job)
        return built.counter, built.max_tokens
    return make_counter(job.limits.tokenizer, resolve_model(job).name), None


def build(job: JobConfig, transport: Transport | None = None) -> Built:
    """Construct the provider for ``job``; HTTP providers send through ``transport`` (default: aiohttp)."""
    model = resolve_model(job)
    if model.provider == "local":
        from batchembed.providers.local import LocalEmbedder

        embedder = LocalEmbedder(path=job.model.path, dimensions=job.model.dimensions, threads=job.model.threads)
        counter = (
            LocalModelCounter(embedder) if job.limits.tokenizer == "estimate" else make_counter(job.limits.tokenizer)
        )
        provider: Any = embedder
        if job.is_rerank:
            from batchembed.providers.rerank import LocalCosineReranker

            provider = LocalCosineReranker(embedder)
        return Built(provider, counter, {"sha256": embedder.sha256}, embedder.max_tokens)
    if job.is_rerank:
        from batchembed.providers.rerank import HTTPReranker

        fmt = job.rerank.format if job.rerank else "auto"
        if fmt == "auto" and model.provider == "fireworks":
            fmt = "fireworks"
        reranker = HTTPReranker(
            provider=model.provider,
            model=model.name,
            base_url=model.base_url or "",
            api_key=api_key(job),
            fmt=fmt,
            timeout=job.model.timeout,
            max_connections=job.limits.concurrency,
            extra_body=job.model.extra_body,
            transport=transport,
        )
        return Built(reranker, make_counter(job.limits.tokenizer, model.name), {}, None)
    from batchembed.providers.openai_compat import OpenAICompatibleEmbedder

    embedder = OpenAICompatibleEmbedder(
        provider=model.provider,
        model=model.name,
        base_url=model.base_url or "",
        api_key=api_key(job),
        dimensions=job.model.dimensions,
        use_base64=model.use_base64,
        timeout=job.model.timeout,
        max_connections=job.limits.concurrency,
        fall_back_to_float=job.model.encoding == "auto",
        dimensions_by=job.model.dimensions_by,
        extra_body=job.model.extra_body,
        transport=transport,
    )
    return Built(embedder, make_counter(job.limits.tokenizer, model.name), {}, None)


class LocalModelCounter:
    """Exact counts and truncation with the local model's own tokenizer."""

    name = "local-model"

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder

    def count(self, texts: pa.Array) -> np.ndarray:
        """Tokens per text as the model sees them."""
        return self._embedder.count_tokens([t if t is not None else "" for t in texts.to_pylist()])

    def truncate(self, text: str, max_tokens: int) -> str:
        """Token-accurate cut."""
        return self._embedder.truncate(text, max_tokens)

    def observe(self, estimated: int, reported: int) -> None:
        """Exact counts need no calibration."""
