"""Job configuration: frozen dataclasses, loaded from TOML, checked field by field.

Every field has a default and a comment; the TOML tables map one-to-one onto the dataclasses below.
Unknown keys and wrong types are ``ConfigError``s that name the key (``limits.concurrency``), so a
typo in a job file is caught before anything is read or sent. Secrets never live here: only the
*name* of the environment variable holding the API key does.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batchembed.errors import ConfigError, UsageError
from batchembed.fs.paths import shown
from batchembed.job.checks import check_locations, check_sinks, check_tier
from batchembed.job.mapping import from_mapping
from batchembed.job.overrides import apply_overrides, blame, known_keys, unset_hint
from batchembed.job.templates import text_fields


@dataclass(frozen=True)
class InputConfig:
    """``[input]``: where rows come from and how a row becomes text."""

    path: str = ""  # a file, a directory or a glob of .parquet / .csv / .jsonl files (CSV, JSONL also compressed)
    text: str = "text"  # a column name, or a template over columns: "{title}\n\n{body}"
    id: str | None = None  # id column; without it an id "file:row" is generated
    keep: tuple[str, ...] = ()  # columns copied next to the vector
    on_empty: Literal["skip", "fail"] = "skip"  # null/blank text: keep the row with a null vector, or fail
    role: Literal["document", "query"] = "document"  # queries get the model's query instruction
    instruction: str | None = None  # task for Qwen3-style query prefixes: "Instruct: {task}\nQuery:{text}"
    prefix: str = ""  # literal prefix for every text, e.g. nomic's "search_query: "
    cast_text: bool = False  # embed a non-string text column as its text form (else such a column is an error)
    identity: Literal["metadata", "content"] = "metadata"  # a changed local file: size+mtime | size+digest


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: which provider and model turn text into vectors."""

    provider: Literal["fireworks", "openai", "openai-compatible", "mistral", "voyage", "local"] = "fireworks"
    name: str | None = None  # default taken from the provider
    base_url: str | None = None  # default taken from the provider
    api_key_env: str | None = None  # default taken from the provider
    dimensions: int | None = None  # Matryoshka size, sent as `dimensions` (Voyage, Mistral: `output_dimension`)
    encoding: Literal["auto", "float", "base64"] = "auto"
    path: str | None = None  # local provider: a directory with model.onnx + tokenizer.json
    timeout: float = 120.0  # seconds for one request
    threads: int | None = None  # local provider: intra-op threads (default: all cores)
    price_per_million_tokens: float | None = None  # USD, for `batchembed plan` (default: the catalogue's)
    dimensions_by: Literal["server", "client"] = "server"  # client: cut Matryoshka vectors here, L2-normalise
    extra_body: dict[str, Any] | None = None  # merged into every request body, e.g. {input_type = "passage"}
    # auto: L2-normalise vectors that are not unit length when the model's full vectors are (a server cutting
    # `dimensions` without normalising again); always: normalise every vector; never: write them as sent
    normalize: Literal["auto", "always", "never"] = "auto"
    # tier = "batch": the provider's batch API (half price, answers within its window, up to 24 h); see README
    tier: Literal["online", "batch"] = "online"
    batch_poll_seconds: float = 30.0  # batch tier: seconds between looks at the running batches
    batch_resubmits: int = 2  # batch tier: expired/cancelled/timed-out lines are submitted again this often
    batch_fallback: Literal["fail", "online"] = "fail"  # batch tier: lines still unanswered then fail, or go online
    batch_inputs: int | None = None  # batch tier: inputs per batch at most (default and cap: the provider's)
    batch_queue_inputs: int | None = None  # batch tier: inputs enqueued at once at most (default: the provider's)


#: ``limits.concurrency = "auto"``: requests in flight at the start, before anything is learned.
AUTO_START = 8


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: the provider's limits and how hard to push them."""

    requests_per_minute: int | None = None  # default taken from the provider
    tokens_per_minute: int | None = None
    # requests in flight: "auto" learns how many (from AUTO_START, up to max_concurrency: more while the
    # answers come faster, fewer when latency climbs with nothing gained); a number fixes it (429/503 halve it)
    concurrency: int | str = "auto"
    max_concurrency: int = 64  # "auto": the most requests it may keep in flight
    batch_inputs: int = 256  # inputs per request at most
    batch_tokens: int = 100_000  # summed tokens per request at most
    input_tokens: int = 8192  # tokens per input at most
    on_too_long: Literal["truncate", "skip", "fail"] = "truncate"
    max_retries: int = 8
    tokenizer: str = "estimate"  # estimate | path to tokenizer.json | tiktoken encoding name
    connect_timeout: float = 30.0  # seconds a server that never answered is retried before the run gives up
    outage_seconds: float = 300.0  # seconds a server that answered before may stay away before the run stops
    stop_grace_seconds: float = 30.0  # seconds requests in flight get after SIGTERM/SIGINT, then cancelled

    @property
    def auto_concurrency(self) -> bool:
        """Whether the requests in flight are learned (``concurrency = "auto"``) rather than fixed."""
        return self.concurrency == "auto"

    @property
    def in_flight_max(self) -> int:
        """The most requests ever in flight: ``max_concurrency`` when learned, else ``concurrency``."""
        return self.max_concurrency if self.auto_concurrency else int(self.concurrency)


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where the Parquet shards go."""

    path: str = ""  # a directory of shards
    column: str = "embedding"
    shard_rows: int = 100_000
    compression: Literal["none", "snappy", "zstd", "lz4"] = "snappy"
    #: Days a file replaced or dropped by a refresh stays (for Delta time travel); 0 keeps it for readers of
    #: the previous version only (deleted by a later run at least ``refresh.RETIRE_GRACE`` after).
    history_days: float = 0.0
    #: The largest share of the output's rows a refresh may remove without --allow-removal.
    max_removed: float = 0.5


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: never pay twice for the same text."""

    path: str | None = None  # SQLite file keeping vectors across runs (keyed by model, dimensions, text)
    memory_mb: int = 64  # in-memory memo of recent vectors, for duplicates within a run


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: object-store settings the environment cannot give (credentials never go here)."""

    endpoint: str | None = None  # S3-compatible endpoint (MinIO, R2, Ceph); default AWS_ENDPOINT_URL
    region: str | None = None  # default AWS_REGION / AWS_DEFAULT_REGION
    anonymous: bool = False  # read public buckets without credentials
    lease_seconds: float = 60.0  # object-store output: a killed run's lease blocks others this long at most


@dataclass(frozen=True)
class EngineConfig:
    """``[engine]``: where the job runs: this process, or a Ray cluster (``docs/scaling.md``)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # Ray cluster address; default RAY_ADDRESS, else a local Ray started for the run
    workers: int = 2  # Ray workers (each runs the pipeline on the units it is handed)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # --shard I/N: "share" paces each shard to 1/N of [limits]/[model] rates; "full" gives each the whole rate
    shard_pacing: Literal["share", "full"] = "share"


@dataclass(frozen=True)
class SinkConfig:
    """``[[sink]]``: a vector store kept equal to the output's Delta table (``batchembed/sinks/``).

    Not part of the job's fingerprint: adding, changing or removing a sink is not a new job."""

    kind: Literal["postgres", "lancedb"] = "postgres"
    table: str = ""  # the table in the store; postgres: schema-qualified names allowed ("search.doc_vectors")
    dsn_env: str = "BATCHEMBED_PG_DSN"  # postgres: the environment variable holding the connection string
    index: Literal["hnsw", "none"] = "none"  # postgres: an HNSW (cosine) index, built after the first load
    uri: str | None = None  # lancedb: a local directory or a bucket URI ([storage] settings apply)


@dataclass(frozen=True)
class RerankConfig:
    """``[rerank]``: score (query, document) pairs instead of embedding texts."""

    layout: Literal["pairs", "lists"] = "pairs"  # one row per pair | one row per query with a list of documents
    query: str = "query"  # query text column
    query_id: str | None = None  # query id column (default: the query text)
    document: str = "document"  # document text column (lists: a list<string> column)
    doc_id: str | None = None  # document id column (lists: a list column; default: "file:row" / list position)
    top_n: int | None = None  # keep the n best documents per query (default: all)
    return_documents: bool = False  # copy the document text into the output
    task: str | None = None  # instruction for Qwen3 rerankers (sent as Fireworks' `task`)
    format: Literal["auto", "fireworks", "cohere", "jina", "voyage", "vllm", "tei"] = "auto"  # response shape


@dataclass(frozen=True)
class JobConfig:
    """A whole job file."""

    kind: Literal["embed", "rerank"] | None = None  # default: "rerank" when [rerank] is present
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    rerank: RerankConfig | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sink: tuple[SinkConfig, ...] = ()  # [[sink]] tables: vector stores kept equal to the output

    @property
    def is_rerank(self) -> bool:
        """Whether this job scores pairs rather than embedding texts."""
        return self.kind == "rerank" or (self.kind is None and self.rerank is not None)


# ---------------------------------------------------------------------------------------------- loading


def load_job(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), unsets: list[str] | tuple[str, ...] = ()
) -> JobConfig:
    """Read a TOML job file, apply ``--set key=value`` and ``--unset key``, and validate everything.

    Raises ``ConfigError`` naming the file and key for anything wrong in the file, ``UsageError`` naming
    the ``--set``/``--unset`` for anything wrong that the command line gave (``job.overrides``).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {shown(path)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file {shown(path)}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    given = apply_overrides(raw, list(overrides), list(unsets), known_keys(JobConfig))
    try:
        return validate(from_mapping(JobConfig, raw, ""))
    except ConfigError as exc:
        said = blame(str(exc), given)
        if said is None:
            raise ConfigError(f"{path}: {exc}") from None
        key = said.split()[1].split("=")[0]
        value = raw.get(key.split(".")[0], {}).get(key.split(".", 1)[1]) if "." in key else None
        raise UsageError(f"{said}: {exc}{unset_hint(key, value)}") from None


def validate(job: JobConfig) -> JobConfig:
    """Cross-field checks that a type hint cannot express."""
    if not job.input.path:
        raise ConfigError("input.path is required")
    if not job.output.path:
        raise ConfigError("output.path is required")
    text_fields(job.input.text)  # raises on a malformed template
    if isinstance(job.limits.concurrency, str) and not job.limits.auto_concurrency:
        raise ConfigError(f'limits.concurrency must be an integer or "auto", got str {job.limits.concurrency!r}')
    for key, value in (
        ("limits.concurrency", job.limits.in_flight_max),
        ("limits.max_concurrency", job.limits.max_concurrency),
        ("limits.batch_inputs", job.limits.batch_inputs),
        ("limits.batch_tokens", job.limits.batch_tokens),
        ("limits.input_tokens", job.limits.input_tokens),
        ("output.shard_rows", job.output.shard_rows),
        ("engine.workers", job.engine.workers),
        ("limits.requests_per_minute", job.limits.requests_per_minute),
        ("limits.tokens_per_minute", job.limits.tokens_per_minute),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if job.limits.max_retries < 0:
        raise ConfigError(f"limits.max_retries must be 0 or more, got {job.limits.max_retries}")
    for key in ("connect_timeout", "outage_seconds", "stop_grace_seconds"):
        if getattr(job.limits, key) < 0:
            raise ConfigError(f"limits.{key} must be 0 or more, got {getattr(job.limits, key)}")
    if job.limits.input_tokens > job.limits.batch_tokens:
        raise ConfigError(
            f"limits.input_tokens ({job.limits.input_tokens}) cannot exceed limits.batch_tokens "
            f"({job.limits.batch_tokens}): such an input could never be sent"
        )
    if job.is_rerank:
        rr = job.rerank or RerankConfig()
        if rr.top_n is not None and rr.top_n < 1:
            raise ConfigError(f"rerank.top_n must be at least 1, got {rr.top_n}")
    if job.cache.memory_mb < 0:
        raise ConfigError("cache.memory_mb must be 0 or more")
    if job.output.history_days < 0:
        raise ConfigError(f"output.history_days must be 0 or more, got {job.output.history_days}")
    if not 0 <= job.output.max_removed <= 1:
        raise ConfigError(f"output.max_removed must be between 0 and 1, got {job.output.max_removed}")
    check_locations(job)
    if job.model.dimensions is not None and job.model.dimensions < 1:
        raise ConfigError(f"model.dimensions must be at least 1, got {job.model.dimensions}")
    if job.model.provider == "openai-compatible" and not job.model.base_url:
        raise ConfigError('model.base_url is required when model.provider = "openai-compatible"')
    reserved = sorted(set(job.model.extra_body or {}) & RESERVED_BODY_FIELDS)
    if reserved:
        raise ConfigError(
            f"model.extra_body cannot set {', '.join(reserved)}: batchembed sends those itself "
            "(use model.name, model.dimensions, model.encoding; the texts come from [input])"
        )
    if job.model.dimensions_by == "client" and job.model.dimensions is None:
        raise ConfigError('model.dimensions_by = "client" needs model.dimensions (the size to cut vectors to)')
    if job.model.timeout <= 0:
        raise ConfigError("model.timeout must be positive")
    check_tier(job)
    check_sinks(job)
    keep = job.input.keep
    if len(set(keep)) != len(keep):
        raise ConfigError("input.keep lists a column twice")
    if not job.is_rerank and (job.output.column in keep or job.output.column == job.input.id):
        raise ConfigError(f"output.column {job.output.column!r} clashes with an input column of the same name")
    return job


#: Request fields ``model.extra_body`` may not set: batchembed owns them.
RESERVED_BODY_FIELDS = frozenset(
    {"model", "input", "dimensions", "encoding_format", "query", "documents", "texts", "top_n", "top_k"}
)


def column_keys(job: JobConfig) -> dict[str, str]:
    """Which job-file key names each column the job reads (for messages): ``{"doc": "input.text", ...}``."""
    named: dict[str, str] = {}
    if job.is_rerank:
        rr = job.rerank or RerankConfig()
        for key in ("query", "query_id", "document", "doc_id"):
            if getattr(rr, key):
                named.setdefault(getattr(rr, key), f"rerank.{key}")
    else:
        for name in text_fields(job.input.text):
            named.setdefault(name, "input.text" if name == job.input.text else f"input.text's template {{{name}}}")
        if job.input.id:
            named.setdefault(job.input.id, "input.id")
    for name in job.input.keep:
        named.setdefault(name, "input.keep")
    return named
