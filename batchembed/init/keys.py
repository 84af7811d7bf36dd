"""One line of explanation for every job-file key, as ``batchembed init`` writes them commented out.

A key whose default is a value is shown with that default (uncommenting it changes nothing). A key
that is unset by default is shown with an example value, and its line says what unset means. The
defaults themselves come from ``config``'s dataclasses, never from here, so they cannot drift; a key
added to ``config`` without a line here is still written, with its default and a pointer to README.
"""

from __future__ import annotations

import os
from typing import Any

from batchembed.job.resolved import PROVIDERS

#: key -> its explanation (keys with a real default).
NOTES: dict[str, str] = {
    "input.text": 'a column, or a template over columns: "{title}\\n\\n{body}"',
    "input.keep": "columns copied next to the vector",
    "input.on_empty": 'null or blank text: "skip" (row kept, null vector) | "fail" (stop the run)',
    "input.role": '"query": the model\'s query instruction goes before every text (Qwen3, nomic)',
    "input.prefix": 'a literal prefix for every text, e.g. "search_query: "',
    "input.cast_text": 'embed a non-string text column as text (42 -> "42") instead of refusing it',
    "input.identity": 'a changed local file is seen by: "metadata" (size + mtime) | "content" (a digest)',
    "model.provider": "fireworks | openai | openai-compatible (any base_url) | local",
    "model.encoding": "how vectors travel: auto | float | base64",
    "model.timeout": "seconds per request",
    "model.dimensions_by": "server: send `dimensions` | client: cut vectors here (servers that ignore it)",
    "limits.concurrency": 'requests in flight: "auto" learns it | a number fixes it',
    "limits.max_concurrency": '"auto": the most requests it may keep in flight',
    "limits.batch_inputs": "inputs per request at most",
    "limits.batch_tokens": "tokens per request at most",
    "limits.input_tokens": "tokens per input at most (a model's own limit caps it)",
    "limits.on_too_long": "a longer text: truncate | skip (null vector) | fail",
    "limits.max_retries": "retries per request (429, 5xx, timeouts), with backoff",
    "limits.tokenizer": "token counting: estimate | a tokenizer.json | a tiktoken encoding",
    "limits.connect_timeout": "seconds a server that never answered is retried before giving up (exit 68)",
    "limits.outage_seconds": "seconds a server that answered may stay away before the run stops (exit 68)",
    "limits.stop_grace_seconds": "seconds requests in flight get after SIGTERM/Ctrl-C before they are cancelled",
    "output.column": "the vector column: fixed_size_list<float32>",
    "output.shard_rows": "input rows per shard: the unit of exactly-once resume",
    "output.compression": "none | snappy | zstd | lz4",
    "output.history_days": "days a file a refresh replaced is kept for Delta time travel (0: 10 minutes, for readers)",
    "output.max_removed": "a refresh removing a larger share of the rows is refused (--allow-removal)",
    "model.normalize": "auto: L2-normalise vectors a server cut without normalising | always | never",
    "model.tier": "online | batch: the provider's batch API at its discount (openai, mistral, voyage)",
    "model.batch_poll_seconds": "batch tier: seconds between looks at the running batches",
    "model.batch_resubmits": "batch tier: expired/cancelled lines are submitted again this often",
    "model.batch_fallback": 'batch tier: lines still unanswered then "fail" | go "online"',
    "cache.memory_mb": "memory for recent vectors (a duplicate text is embedded once)",
    "storage.anonymous": "read a public bucket without credentials",
    "storage.lease_seconds": "object-store output: how long a killed run blocks the next one",
    "engine.kind": "local: this process | ray: Ray workers (also `run --engine ray`)",
    "engine.workers": "Ray workers (also `run --workers N`)",
    "engine.cpus_per_worker": "Ray CPUs per worker (the local model uses this many threads)",
    "engine.gpus_per_worker": "Ray GPUs per worker",
    "engine.shard_pacing": "run --shard I/N: share the limits between the parts | full: each part all of them",
}

#: key -> (an example value, what the line says) for keys unset by default.
EXAMPLES: dict[str, tuple[Any, str]] = {
    "input.id": ("id", 'a unique id column; not set: each row\'s id is "file:row"'),
    "input.instruction": (
        "Given a web search query, retrieve relevant passages",
        'with role = "query": the Qwen3 query task; not set: the model\'s own',
    ),
    "model.batch_inputs": (50_000, "batch tier: inputs per batch at most; not set: the provider's cap"),
    "model.batch_queue_inputs": (1_000_000, "batch tier: inputs enqueued at once; not set: the provider's limit"),
    "model.dimensions": (256, "shorter vectors (Matryoshka models), checked against the model; not set: full size"),
    "model.path": ("models/bge/", "local: another ONNX sentence-transformers directory; not set: the shipped model"),
    "model.price_per_million_tokens": (0.1, "USD, for plan's cost estimate; not set: the catalogue's price, if known"),
    "model.extra_body": ({"input_type": "passage"}, "fields merged into every request body; not set: none"),
    "cache.path": ("cache/vectors.sqlite", "a file keeping every vector across runs and jobs; not set: none"),
    "storage.endpoint": ("https://minio.internal:9000", "an S3-compatible endpoint; not set: AWS_ENDPOINT_URL"),
    "storage.region": ("eu-west-1", "not set: AWS_REGION / AWS_DEFAULT_REGION"),
    "engine.address": ("ray://head:10001", "a Ray cluster; not set: RAY_ADDRESS, else a private local Ray"),
}


#: Keys a local model does not use (it sends no HTTP request).
LOCAL_IGNORES = frozenset(
    {"model.base_url", "model.api_key_env", "limits.requests_per_minute", "limits.tokens_per_minute"}
)


def explain(key: str, default: Any, provider_name: str, columns: list[str]) -> tuple[Any, str]:
    """(the value to show, its one-line note) for ``key`` written commented out in a proposed job file for
    ``provider_name`` over an input with these ``columns``."""
    provider = PROVIDERS[provider_name]
    if key == "input.keep":
        return default, f"{NOTES[key]}; this input has: {', '.join(columns)}"
    by_provider = {
        "model.name": (provider.model, "the model; not set: the provider's default, shown"),
        "model.base_url": (provider.base_url or "http://127.0.0.1:8080/v1", "the API root; not set: the provider's"),
        "model.api_key_env": (
            provider.api_key_env or "MY_API_KEY",
            "the variable holding the API key (its name, never the key); not set: the provider's",
        ),
        "model.threads": (os.cpu_count() or 1, "local model: ONNX threads; not set: every core, as shown"),
        "limits.requests_per_minute": (provider.requests_per_minute, "not set: the provider's default, shown"),
        "limits.tokens_per_minute": (provider.tokens_per_minute, "not set: the provider's default, shown"),
    }
    if key in by_provider:
        value, note = by_provider[key]
        if provider_name == "local" and key in LOCAL_IGNORES:
            note = "remote providers only: the local model is bound by its threads, not by rate limits"
        return value, note
    if default is None:
        if key in EXAMPLES:
            return EXAMPLES[key]
        return "", "unset by default; see README.md"
    return default, NOTES.get(key, "see README.md")
