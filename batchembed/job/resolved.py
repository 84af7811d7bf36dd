"""A job's settings resolved once: provider defaults filled in, prefix, input limit, preset, model facts.

A job file leaves most things to defaults ("the provider's base URL", "the model's prefix", "the
smaller of the configured and the model's own input limit"). Those answers are worked out here,
once per job, into a frozen ``ResolvedJob`` that every downstream part takes as it is (the assembly
in ``batchembed.run.assemble``, the tasks, ``batchembed plan``), so no two callers can derive them apart.
The pattern is openai-python's ``FinalRequestOptions`` and httpx's ``BaseClient``: merge the
configuration once, then only read the result.

Nothing here reads an API key or sends a request. The one side effect: a ``local`` model is a pair
of files, and what only the loaded model knows (its own input limit, its sha256 for the job
fingerprint, its tokenizer) is learned by loading it once here; the loaded model travels in the
``ResolvedJob`` so that the assembly uses it rather than loading it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchembed.job import catalog
from batchembed.job.catalog import ModelPreset
from batchembed.job.config import JobConfig
from batchembed.providers.request_fields import role_options


@dataclass(frozen=True)
class ProviderDefaults:
    """What a provider name implies when the job file does not say."""

    model: str
    base_url: str | None
    api_key_env: str | None
    base64: bool  # known to accept encoding_format=base64
    requests_per_minute: int
    tokens_per_minute: int
    max_inputs: int  # the provider's own per-request cap


PROVIDERS: dict[str, ProviderDefaults] = {
    # Fireworks' schema does not list encoding_format=base64 (unverified), so auto sends floats there.
    "fireworks": ProviderDefaults(
        "fireworks/qwen3-embedding-8b",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
        False,
        600,
        1_000_000,
        2048,
    ),
    "openai": ProviderDefaults(
        "text-embedding-3-small", "https://api.openai.com/v1", "OPENAI_API_KEY", True, 3000, 1_000_000, 2048
    ),
    # batch-tier providers (docs.mistral.ai, docs.voyageai.com); Voyage takes base64, Mistral is sent floats
    "mistral": ProviderDefaults(
        "mistral-embed", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", False, 300, 20_000_000, 512
    ),
    "voyage": ProviderDefaults(
        "voyage-3.5", "https://api.voyageai.com/v1", "VOYAGE_API_KEY", True, 2000, 3_000_000, 1000
    ),
    # unknown servers: base64 first, falling back to float if refused (see OpenAICompatibleEmbedder)
    "openai-compatible": ProviderDefaults("default", None, None, True, 6000, 10_000_000, 2048),
    "local": ProviderDefaults("all-MiniLM-L6-v2", None, None, False, 1_000_000, 1_000_000_000, 256),
}


@dataclass(frozen=True)
class ResolvedModel:
    """The model settings with provider defaults filled in."""

    provider: str
    name: str
    base_url: str | None
    api_key_env: str | None
    use_base64: bool
    requests_per_minute: int
    tokens_per_minute: int
    batch_inputs: int


def resolve_model(job: JobConfig) -> ResolvedModel:
    """Fill provider defaults into the model and limits settings (``resolve`` calls it once per job)."""
    defaults = PROVIDERS[job.model.provider]
    m = job.model
    use_base64 = defaults.base64 if m.encoding == "auto" else m.encoding == "base64"
    return ResolvedModel(
        provider=m.provider,
        name=m.name or defaults.model,
        base_url=(m.base_url or defaults.base_url or "").rstrip("/") or None,
        api_key_env=m.api_key_env if m.api_key_env is not None else defaults.api_key_env,
        use_base64=use_base64,
        requests_per_minute=job.limits.requests_per_minute or defaults.requests_per_minute,
        tokens_per_minute=job.limits.tokens_per_minute or defaults.tokens_per_minute,
        batch_inputs=min(job.limits.batch_inputs, defaults.max_inputs),
    )


@dataclass(frozen=True)
class ResolvedJob:
    """Everything a job's parts need to know about it, worked out once from its ``JobConfig``."""

    config: JobConfig  # the job file as loaded (and overridden)
    model: ResolvedModel  # provider, name, base URL, key variable, base64, rates, inputs per request
    prefix: str  # what goes before every text (the model's query instruction / document prefix, input.prefix)
    input_tokens: int  # tokens per input at most: limits.input_tokens, capped by the model's own limit
    model_max_tokens: int | None  # the model's own input limit, when known (the local model's)
    tokenizer: str  # limits.tokenizer: "estimate", a tokenizer.json path or a tiktoken encoding
    encoding: str  # what vectors are asked for first: "base64" or "float"
    fall_back_to_float: bool  # encoding "auto": a server refusing base64 is asked for floats instead
    preset: ModelPreset | None  # the catalogue's entry for the model (None: unknown, or a local model directory)
    identity: Mapping[str, Any] = field(default_factory=dict)  # facts of the model itself (the local sha256)
    local_model: Any = field(default=None, repr=False, compare=False)  # the loaded local model, if any

    @property
    def is_rerank(self) -> bool:
        """Whether the job scores pairs rather than embedding texts."""
        return self.config.is_rerank

    @property
    def send_dimensions(self) -> int | None:
        """The ``dimensions`` a request asks the server for: ``model.dimensions`` when the server cuts
        (``dimensions_by = "server"``, the default), else none. With ``cut_dimensions``, the one place that
        decides who cuts a vector."""
        model = self.config.model
        return model.dimensions if model.dimensions_by == "server" else None

    @property
    def cut_dimensions(self) -> int | None:
        """The size vectors are cut to here (``dimensions_by = "client"``: servers that ignore
        ``dimensions``), else none."""
        model = self.config.model
        return model.dimensions if model.dimensions_by == "client" else None

    @property
    def model_unit_norm(self) -> bool | None:
        """Whether the model's full vectors are unit length, when known without asking the server: the
        local model's own files, or the catalogue's preset served by its own provider (another server
        may serve the same name otherwise); None: the canary looks (``normalize.learn_unit_norm``)."""
        if self.local_model is not None:
            return bool(self.local_model.normalized)
        if self.preset is not None and self.preset.provider == self.model.provider:
            return self.preset.unit_norm
        return None

    @property
    def cut_reason(self) -> str:
        """Why a text over ``input_tokens`` is cut, as ``_truncated.parquet`` records it: the job's
        ``limits.input_tokens``, or the model's own limit when that is the smaller one."""
        if self.model_max_tokens is not None and self.model_max_tokens < self.config.limits.input_tokens:
            return f"model: {self.model_max_tokens}-token input limit"
        return "limits.input_tokens"

    def fingerprint(self) -> dict[str, Any]:
        """The job fingerprint's model part: what changes the answers apart from the task and the files.

        ``model.normalize`` is listed only when it is not the default "auto" (older outputs keep theirs)."""
        normalize = self.config.model.normalize
        return {
            "model.provider": self.model.provider,
            "model.name": self.model.name,
            "model.dimensions": self.config.model.dimensions,
            **model_request_fingerprint(self.config),
            **({"model.normalize": normalize} if normalize != "auto" else {}),
            **{f"model.{k}": v for k, v in self.identity.items()},
            "output.shard_rows": self.config.output.shard_rows,
        }


def limit_text(reason: str, tokens: int) -> str:
    """The limit a text was cut to, in words: "limits.input_tokens = 8192" or "the model's 256-token input limit"."""
    return (
        f"limits.input_tokens = {tokens}"
        if reason == "limits.input_tokens"
        else f"the model's {tokens}-token input limit"
    )


def model_request_fingerprint(job: JobConfig) -> dict[str, Any]:
    """Request settings that change the vectors (only when set, so older outputs keep their fingerprint):
    a provider's own role field (Voyage's ``input_type`` for queries), ``extra_body``, ``dimensions_by``."""
    out: dict[str, Any] = {f"model.{k}": v for k, v in role_options(job.model.provider, job.input.role).items()}
    if job.model.extra_body:
        out["model.extra_body"] = dict(sorted(job.model.extra_body.items()))
    if job.model.dimensions_by != "server":
        out["model.dimensions_by"] = job.model.dimensions_by
    return out


def resolve(job: JobConfig | ResolvedJob, embeds: bool = True) -> ResolvedJob:
    """Resolve ``job`` (a ``ResolvedJob`` is returned as it is): the one place its model is resolved.

    ``embeds=False``: this process embeds nothing (a Ray driver): a local model's files, digest and
    tokenizer are read, its ONNX session is not loaded.

    Raises ``ConfigError`` for a ``model.dimensions`` the catalogued model cannot return and for a
    local model that cannot be loaded, before anything is read or sent.
    """
    if isinstance(job, ResolvedJob):
        return job
    model = resolve_model(job)
    local_dir = model.provider == "local" and job.model.path is not None  # a model the catalogue cannot know
    if not local_dir:
        catalog.check_dimensions(model.name, job.model.dimensions, model.provider)
    local_model, max_tokens, identity = None, None, {}
    if model.provider == "local":
        from batchembed.providers.local import LocalEmbedder  # (onnxruntime, the local extra: a local job only)

        local_model = LocalEmbedder(
            path=job.model.path, dimensions=job.model.dimensions, threads=job.model.threads, session=embeds
        )
        max_tokens, identity = local_model.max_tokens, {"sha256": local_model.sha256}
    limit = job.limits.input_tokens
    return ResolvedJob(
        config=job,
        model=model,
        prefix=catalog.document_prefix(model.name, job.input.role, job.input.instruction, job.input.prefix),
        input_tokens=min(limit, max_tokens or limit),
        model_max_tokens=max_tokens,
        tokenizer=job.limits.tokenizer,
        encoding="base64" if model.use_base64 else "float",
        fall_back_to_float=job.model.encoding == "auto",
        preset=None if local_dir else catalog.lookup(model.name, model.provider),
        identity=identity,
        local_model=local_model,
    )
