"""Built-in model presets: what batchembed knows about well-known embedding and rerank models.

The catalogue is advice, never a gate. A preset lets batchembed check ``model.dimensions`` before
any request, put the model's documented query/document prefixes in front of each text, and price a
dry run. A model that is not listed -- any Fireworks LLM used as an embedder, a custom upload,
``accounts/<acct>/deployedModels/<name>``, whatever an OpenAI-compatible server hosts -- is simply
unknown: ``lookup`` returns ``None`` and every check lets it through untouched.

Numbers come from the model cards and the providers' public docs. Prices are listed only where they
are known for sure (OpenAI's list prices); ``None`` means "unknown", never "free". Rate limits are
per account and tier, so presets leave them ``None`` (the provider default applies).

This module imports nothing from ``batchembed.job.config`` so that config validation may import it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from batchembed.errors import ConfigError
from batchembed.exitcodes import ExitCode


@dataclass(frozen=True)
class ModelPreset:
    """What batchembed knows about one model."""

    id: str  # the model name as sent to the provider, e.g. "fireworks/qwen3-embedding-8b"
    provider: str  # "fireworks" | "openai" | "local"
    kind: str  # "embed" | "rerank"
    native_dim: int | None  # vector length without `dimensions`; None for rerankers
    min_dim: int | None  # smallest accepted `dimensions` (Matryoshka); None = `dimensions` not supported
    query_format: str | None  # "qwen3" | "nomic" | None
    default_instruction: str | None  # task used for queries when input.instruction is not set
    requests_per_minute: int | None  # None = the provider's default
    tokens_per_minute: int | None
    max_input_tokens: int | None  # model context per input
    price_per_million_tokens: float | None  # USD; None = not known for sure
    description: str
    #: Whether the model's full vectors are L2-normalised, when known for sure (None: the canary looks)
    unit_norm: bool | None = None


#: Qwen3-Embedding's own default task (its README's ``get_detailed_instruct`` example).
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
NOMIC_QUERY, NOMIC_DOCUMENT = "search_query: ", "search_document: "


def _embed(
    id: str,
    provider: str,
    native: int,
    min_dim: int | None,
    context: int | None,
    description: str,
    *,
    query_format: str | None = None,
    instruction: str | None = None,
    price: float | None = None,
    unit_norm: bool | None = None,
) -> ModelPreset:
    return ModelPreset(
        id,
        provider,
        "embed",
        native,
        min_dim,
        query_format,
        instruction,
        None,
        None,
        context,
        price,
        description,
        unit_norm,
    )


def _rerank(id: str, description: str) -> ModelPreset:
    return ModelPreset(
        id, "fireworks", "rerank", None, None, None, QWEN3_INSTRUCTION, None, None, 32_768, None, description
    )


# fmt: off
_PRESETS = [
    # Fireworks: the Qwen3 family (32k context, Matryoshka down to 32 dims, instruction-aware queries)
    _embed(
        "fireworks/qwen3-embedding-8b", "fireworks", 4096, 32, 32_768,
        "Qwen3 Embedding 8B: best quality, multilingual, long context (Fireworks serverless)",
        query_format="qwen3", instruction=QWEN3_INSTRUCTION,
    ),
    _embed(
        "fireworks/qwen3-embedding-4b", "fireworks", 2560, 32, 32_768,
        "Qwen3 Embedding 4B: near-8B quality at lower cost (on-demand deployment)",
        query_format="qwen3", instruction=QWEN3_INSTRUCTION,
    ),
    _embed(
        "fireworks/qwen3-embedding-0p6b", "fireworks", 1024, 32, 32_768,
        "Qwen3 Embedding 0.6B: small and fast, multilingual (on-demand deployment)",
        query_format="qwen3", instruction=QWEN3_INSTRUCTION,
    ),
    _rerank("fireworks/qwen3-reranker-8b", "Qwen3 Reranker 8B: scores query/document pairs (Fireworks serverless)"),
    _rerank("fireworks/qwen3-reranker-4b", "Qwen3 Reranker 4B: scores query/document pairs (on-demand deployment)"),
    _rerank("fireworks/qwen3-reranker-0p6b", "Qwen3 Reranker 0.6B: fast query/document scoring (on-demand)"),
    # Fireworks: legacy BERT-style models (serverless only)
    _embed(
        "nomic-ai/nomic-embed-text-v1.5", "fireworks", 768, 64, 8192,
        "Nomic Embed v1.5: English, 8k context, Matryoshka; search_query:/search_document: prefixes",
        query_format="nomic",
    ),
    _embed(
        "nomic-ai/nomic-embed-text-v1", "fireworks", 768, None, 8192,
        "Nomic Embed v1: English, 8k context; search_query:/search_document: prefixes",
        query_format="nomic",
    ),
    _embed("BAAI/bge-base-en-v1.5", "fireworks", 768, None, 512, "BGE base v1.5: English retrieval, 512 tokens"),
    _embed("BAAI/bge-small-en-v1.5", "fireworks", 384, None, 512, "BGE small v1.5: compact English retrieval"),
    _embed("thenlper/gte-large", "fireworks", 1024, None, 512, "GTE large: English general-purpose, 512 tokens"),
    _embed(
        "mixedbread-ai/mxbai-embed-large-v1", "fireworks", 1024, None, 512,
        "mxbai embed large v1: English retrieval, 512 tokens",
    ),
    _embed(
        "sentence-transformers/all-MiniLM-L6-v2", "fireworks", 384, None, 256,
        "all-MiniLM-L6-v2 on Fireworks: tiny English sentence similarity",
    ),
    # OpenAI (list prices, USD per 1M input tokens)
    _embed(
        "text-embedding-3-small", "openai", 1536, 1, 8191,
        "OpenAI text-embedding-3-small: cheap general-purpose, shortenable", price=0.02, unit_norm=True,
    ),
    _embed(
        "text-embedding-3-large", "openai", 3072, 1, 8191,
        "OpenAI text-embedding-3-large: OpenAI's best, shortenable", price=0.13, unit_norm=True,
    ),
    _embed(
        "text-embedding-ada-002", "openai", 1536, None, 8191,
        "OpenAI ada-002 (legacy): fixed 1536 dims", price=0.10, unit_norm=True,
    ),
    # Embedded in the package: runs in-process, costs nothing but CPU
    _embed(
        "all-MiniLM-L6-v2", "local", 384, 1, 256,
        "Embedded all-MiniLM-L6-v2 (int8 ONNX, CPU, offline); truncates and re-normalises itself", price=0.0,
        unit_norm=True,
    ),
]
# fmt: on

PRESETS: dict[str, ModelPreset] = {p.id: p for p in _PRESETS}
_BY_LOWER = {p.id.lower(): p for p in _PRESETS}
#: Names the local provider accepts for its embedded model (see providers/model_files.py).
_LOCAL_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def lookup(name: str | None, provider: str | None = None) -> ModelPreset | None:
    """The preset for a model name, or ``None`` for a model the catalogue does not know.

    Case-insensitive; Fireworks' long form ``accounts/fireworks/models/X`` means ``fireworks/X``.
    With ``provider="local"`` the embedded model's aliases resolve to the local preset (the same name
    on Fireworks is a different deployment with different limits).
    """
    if not name:
        return None
    key = name.strip().lower()
    if key.startswith("accounts/fireworks/models/"):
        key = "fireworks/" + key.removeprefix("accounts/fireworks/models/")
    if provider == "local":
        return PRESETS["all-MiniLM-L6-v2"] if key in _LOCAL_ALIASES else None
    return _BY_LOWER.get(key)


def dims_text(preset: ModelPreset) -> str:
    """``"4096 (32..4096)"``, ``"768 (fixed)"`` or ``"-"`` for a reranker."""
    if preset.native_dim is None:
        return "-"
    if preset.min_dim is None:
        return f"{preset.native_dim} (fixed)"
    return f"{preset.native_dim} ({preset.min_dim}..{preset.native_dim})"


def check_dimensions(name: str | None, dimensions: int | None, provider: str | None = None) -> None:
    """Raise ``ConfigError`` naming ``model.dimensions`` when a known model cannot return that size.

    Unknown models, and ``dimensions = None``, pass untouched: the server has the last word there.
    With a ``provider`` other than the preset's (``openai-compatible``: a TEI, vLLM or Infinity server
    that may well truncate any model's vectors) the check is skipped too.
    """
    if dimensions is None:
        return
    preset = lookup(name, provider)
    if preset is None or (provider is not None and provider != preset.provider):
        return
    if preset.kind == "rerank":
        raise ConfigError(
            f"model.dimensions = {dimensions}: {preset.id} is a reranker and returns scores, not vectors; "
            "remove model.dimensions"
        )
    if preset.min_dim is None:
        raise ConfigError(
            f"model.dimensions = {dimensions}: {preset.id} does not accept a dimensions parameter "
            f"(valid range: none; it always returns {preset.native_dim} dims); remove model.dimensions"
        )
    if not preset.min_dim <= dimensions <= preset.native_dim:
        raise ConfigError(
            f"model.dimensions = {dimensions} is out of range for {preset.id}: "
            f"valid range is {preset.min_dim}..{preset.native_dim}"
        )


def document_prefix(name: str | None, role: str, instruction: str | None, prefix: str) -> str:
    """The whole prefix to put before each text of a job, from the model's documented format.

    - ``qwen3`` models: a query gets ``"Instruct: {task}\\nQuery:"`` (no space after ``Query:``; the
      task is ``instruction`` or the preset's default) followed by ``prefix``; a document gets ``prefix``.
    - ``nomic`` models: ``"search_query: "`` / ``"search_document: "``, unless ``prefix`` is given
      explicitly, which then wins (e.g. ``"clustering: "``); ``instruction`` is not used.
    - any other model, known or not: a query with an ``instruction`` gets the Qwen3 format (what
      instruction-aware LLM embedders on Fireworks expect); otherwise just ``prefix``.
    """
    preset = lookup(name)
    fmt = preset.query_format if preset else None
    if fmt == "nomic":
        if prefix:
            return prefix
        return NOMIC_QUERY if role == "query" else NOMIC_DOCUMENT
    if role != "query":
        return prefix
    task = instruction or (preset.default_instruction if fmt == "qwen3" else None)
    if not task:
        return prefix
    return f"Instruct: {task}\nQuery:" + prefix


def format_table() -> str:
    """The catalogue as a text table (for ``batchembed models``)."""
    header = ("MODEL", "PROVIDER", "KIND", "DIMS (native (range))", "CONTEXT", "$/1M TOK", "WHAT IT IS FOR")
    rows = [header]
    for p in PRESETS.values():
        price = "?" if p.price_per_million_tokens is None else f"{p.price_per_million_tokens:g}"
        context = "?" if p.max_input_tokens is None else str(p.max_input_tokens)
        rows.append((p.id, p.provider, p.kind, dims_text(p), context, price, p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines.append("")
    lines.append(
        "Any other model name (a Fireworks LLM, a custom upload, accounts/<acct>/deployedModels/<name>) works too;"
    )
    lines.append("batchembed then skips these checks and leaves prefixes to input.prefix / input.instruction.")
    return "\n".join(lines)


def models_command(as_json: bool = False) -> int:
    """``batchembed models [--json]``: print the catalogue; returns exit code 0."""
    if as_json:
        print(json.dumps([dataclasses.asdict(p) for p in PRESETS.values()], indent=2))
    else:
        print(format_table())
    return ExitCode.OK
