"""Job configuration: frozen dataclasses, loaded from TOML, checked field by field.

Every field has a default and a comment; the TOML tables map one-to-one onto the dataclasses below.
Unknown keys and wrong types are ``ConfigError``s that name the key (``limits.concurrency``), so a
typo in a job file is caught before anything is read or sent. Secrets never live here: only the
*name* of the environment variable holding the API key does.
"""

from __future__ import annotations

import dataclasses
import os
import string
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batchembed.errors import ConfigError, UsageError
from batchembed.fs.paths import shown
from batchembed.job.checks import check_locations, check_tier
from batchembed.job.overrides import apply_overrides, blame, known_keys, unset_hint
from batchembed.suggest import did_you_mean


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


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: which provider and model turn text into vectors."""

    provider: Literal["fireworks", "openai", "openai-compatible", "mistral", "voyage", "local"] = "fireworks"
    name: str | None = None  # default taken from the provider
    base_url: str | None = None  # default taken from the provider
    api_key_env: str | None = None  # default taken from the provider
    dimensions: int | None = None  # sent as `dimensions` (Matryoshka truncation)
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


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: the provider's limits and how hard to push them."""

    requests_per_minute: int | None = None  # default taken from the provider
    tokens_per_minute: int | None = None
    concurrency: int = 16  # requests in flight at most
    batch_inputs: int = 256  # inputs per request at most
    batch_tokens: int = 100_000  # summed tokens per request at most
    input_tokens: int = 8192  # tokens per input at most
    on_too_long: Literal["truncate", "skip", "fail"] = "truncate"
    max_retries: int = 8
    tokenizer: str = "estimate"  # estimate | path to tokenizer.json | tiktoken encoding name


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where the Parquet shards go."""

    path: str = ""  # a directory of shards
    column: str = "embedding"
    shard_rows: int = 100_000
    compression: Literal["none", "snappy", "zstd", "lz4"] = "snappy"
    #: Days a file replaced or dropped by a refresh stays (for Delta time travel); 0 deletes it at once.
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


def from_mapping(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types by name."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'job'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(_unknown(prefix, unknown[0], known))
    values = {}
    for name, value in raw.items():
        key = _join(prefix, name)
        hint = _optional_dataclass(hints[name])
        if dataclasses.is_dataclass(hint):
            values[name] = from_mapping(hint, value, key)
        else:
            values[name] = _coerce(hint, value, key)
    return cls(**values)


def _unknown(prefix: str, name: str, known: set[str]) -> str:
    """The message for a key (or a section) the job file may not hold: the near match, then the choices."""
    if prefix:
        return f"unknown key {prefix}.{name} in [{prefix}]{did_you_mean(name, known)} (keys of [{prefix}]: " + (
            ", ".join(sorted(known)) + '; every key: README.md, "A job file, field by field")'
        )
    sections = sorted(known - {"kind"})  # ``kind`` (embed | rerank) is read from [rerank]'s presence
    return f"unknown section [{name}]{did_you_mean(name, sections)} (sections: {', '.join(f'[{s}]' for s in sections)})"


def _optional_dataclass(hint: Any) -> Any:
    """``X | None`` where X is a dataclass -> X (a present table builds X); anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return hint


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 2 and type(None) in options:  # X | None given a value: what X says of it
            raise errors[options.index(next(o for o in options if o is not type(None)))]
        raise ConfigError(f"{key}: {value!r} is not valid here")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected nothing, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{key} must be a table, like {{ input_type = "passage" }}; got {type(value).__name__}')
        return dict(value)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {item_type.__name__}, got {type(value).__name__}")
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got a boolean")
    if isinstance(value, hint):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(f"{key} must be {names.get(hint, hint.__name__)}, got {type(value).__name__} {value!r}")


def validate(job: JobConfig) -> JobConfig:
    """Cross-field checks that a type hint cannot express."""
    if not job.input.path:
        raise ConfigError("input.path is required")
    if not job.output.path:
        raise ConfigError("output.path is required")
    text_fields(job.input.text)  # raises on a malformed template
    for key, value in (
        ("limits.concurrency", job.limits.concurrency),
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


def text_fields(template: str) -> list[str]:
    """Column names a text spec refers to: the spec itself if it has no ``{}``, else the template's fields."""
    if "{" not in template and "}" not in template:
        return [template]
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"input.text: malformed template {template!r}: {exc}") from None
    if not names or any(not n for n in names):
        raise ConfigError(f"input.text: template {template!r} must name its columns, like {{title}}")
    return list(dict.fromkeys(names))


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
