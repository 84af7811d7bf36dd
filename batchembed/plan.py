"""``batchembed plan JOB.toml``: a dry run that reads the input the way a run would and sends nothing.

The input is streamed chunk by chunk exactly as the runner cuts it (``plan.iter_chunks``: the same
units and ~4096-row chunks), texts are built, prefixed, blank-checked, counted, deduplicated and
packed into requests with the very calls the runner makes, so the request and token figures are
what a fresh run of the job would send (token figures are as good as the job's tokenizer: the
``estimate`` counter errs on the high side).

Each distinct text is counted once job-wide, as a run sends it: a run shares texts in flight
between chunks and remembers recent vectors (``cache.memory_mb``), and with ``[cache] path`` every
vector. (Without a cache file, a duplicate further away than the memory memo reaches is paid
again, so for huge jobs with far-apart duplicates the figures are a lower bound.) Distinct texts
are tracked memory-bounded as 64-bit blake2b digests in numpy arrays, never a Python set of strings.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed import catalog
from batchembed.batching import pack
from batchembed.checkpoint import Manifest
from batchembed.config import JobConfig, resolve_model, text_fields
from batchembed.inputcheck import check_inputs
from batchembed.sources import check_columns, discover
from batchembed.store import storage_options
from batchembed.texts import add_prefix, blank_mask, build_texts
from batchembed.tokens import TokenCounter, over_limit
from batchembed.units import iter_chunks

#: Rows per chunk; must equal ``runner.CHUNK_ROWS`` (a test checks) so requests are packed alike.
CHUNK_ROWS = 4096
#: Digests gathered before they are folded into the sorted job-wide set (bounds memory to the uniques).
_COMPACT_EVERY = 1 << 16


@dataclass
class PlanReport:
    """Everything ``plan`` prints."""

    provider: str
    model: str
    preset: str | None  # the catalogue entry used, if any
    dimensions: int | None
    prefix: str
    files: list[dict] = field(default_factory=list)  # name, format, rows
    rows: int = 0
    blank_rows: int = 0  # null or whitespace-only text: kept with a null vector, never sent
    too_long_rows: int = 0  # rows whose text counts more than input_tokens
    skipped_rows: int = 0  # blank + too long under on_too_long = "skip"
    rows_to_embed: int = 0
    input_tokens: int = 0  # effective limit per input
    on_too_long: str = "truncate"
    unique_texts: int = 0  # exact job-wide (up to 64-bit digest collisions)
    tokens: int = 0  # every embedded row counted, no dedup at all
    tokens_to_send: int = 0  # what the run sends: each distinct text once
    tokens_saved_by_dedup: int = 0
    unique_tokens: int = 0  # if every distinct text were sent exactly once job-wide
    requests: int = 0
    batch_inputs: int = 0
    batch_tokens: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    price_per_million_tokens: float | None = None
    price_source: str | None = None  # "argument" | "catalog" | None (unknown)
    estimated_cost_usd: float | None = None
    eta_seconds: float = 0.0  # lower bound from the rate limits alone
    eta_bound: str = "requests"  # which limit dominates: "requests" | "tokens"
    warnings: list[str] = field(default_factory=list)


class _Seen:
    """Job-wide set of 64-bit text digests, memory proportional to the distinct texts.

    A large sorted array plus a small sorted one that is merged in when it grows (like an LSM tree),
    so checking a chunk costs two binary searches rather than a re-sort of everything seen.
    """

    def __init__(self) -> None:
        self._main = np.zeros(0, np.uint64)
        self._recent = np.zeros(0, np.uint64)
        self.tokens = 0

    @staticmethod
    def _isin(sorted_array: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_array, values)
        pos[pos == len(sorted_array)] = 0
        return sorted_array[pos] == values if len(sorted_array) else np.zeros(len(values), bool)

    def first_seen(self, digests: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Mask of ``digests`` (distinct within the call) never seen before; records them."""
        new = ~(self._isin(self._main, digests) | self._isin(self._recent, digests))
        self._recent = np.sort(np.concatenate([self._recent, digests[new]]))
        self.tokens += int(tokens[new].sum())
        if len(self._recent) > _COMPACT_EVERY:
            self._main = np.sort(np.concatenate([self._main, self._recent]))
            self._recent = np.zeros(0, np.uint64)
        return new

    def __len__(self) -> int:
        return len(self._main) + len(self._recent)


def _digests(texts: pa.Array, which: np.ndarray) -> np.ndarray:
    """64-bit blake2b digest of texts ``which``, hashed straight from the Arrow buffers (no str objects)."""
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    _, offsets_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[texts.offset : texts.offset + len(texts) + 1]
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    starts, ends = offsets[which].tolist(), offsets[which + 1].tolist()
    b2 = hashlib.blake2b
    raw = b"".join([b2(data[s:e], digest_size=8).digest() for s, e in zip(starts, ends, strict=True)])
    return np.frombuffer(raw, dtype=np.uint64)


def estimate(
    job: JobConfig,
    counter: TokenCounter,
    price_per_million: float | None = None,
    prefix: str | None = None,
    max_tokens_per_input: int | None = None,
) -> PlanReport:
    """Stream the job's input and compute the plan (no printing, nothing sent).

    ``prefix``: the prefix the run puts before every text; ``None`` = ``catalog.document_prefix``
    for the job's model, role, instruction and ``input.prefix``. ``max_tokens_per_input``: the
    model's own limit when the provider knows it (``providers.factory.build(job).max_tokens``).
    Raises ``ConfigError`` for a ``model.dimensions`` the model cannot return and ``InputError``
    for missing files or columns, as a run would before sending anything.
    """
    model = resolve_model(job)
    local_custom = model.provider == "local" and job.model.path is not None
    preset = None if local_custom else catalog.lookup(model.name, model.provider)
    if not local_custom:
        catalog.check_dimensions(model.name, job.model.dimensions, model.provider)
    if prefix is None:
        prefix = catalog.document_prefix(
            None if local_custom else model.name, job.input.role, job.input.instruction, job.input.prefix
        )
    limits = job.limits
    input_tokens = min(limits.input_tokens, max_tokens_per_input or limits.input_tokens)
    report = PlanReport(
        provider=model.provider,
        model=model.name,
        preset=preset.id if preset else None,
        dimensions=job.model.dimensions or (preset.native_dim if preset else None),
        prefix=prefix,
        input_tokens=input_tokens,
        on_too_long=limits.on_too_long,
        batch_inputs=model.batch_inputs,
        batch_tokens=limits.batch_tokens,
        requests_per_minute=model.requests_per_minute,
        tokens_per_minute=model.tokens_per_minute,
    )
    if preset and preset.max_input_tokens and input_tokens > preset.max_input_tokens:
        report.warnings.append(
            f"limits.input_tokens = {input_tokens} exceeds {preset.id}'s context of {preset.max_input_tokens} "
            f"tokens: longer texts will be refused by the server; set limits.input_tokens = {preset.max_input_tokens}"
        )
    if preset and preset.kind == "rerank":
        report.warnings.append(f"{preset.id} is a reranker, not an embedding model")

    sources = discover(job.input.path, storage_options(job))
    needed = text_fields(job.input.text)
    every = list(dict.fromkeys([*needed, *([job.input.id] if job.input.id else []), *job.input.keep]))
    for src in sources:
        check_columns(src, every)
    check_inputs(job, sources, every)  # the same refusals as `run` (ids, duplicate columns, text types)
    report.files = [{"name": s.name, "format": s.format, "rows": s.rows} for s in sources]
    rows_of: dict[str, int] = {}
    seen = _Seen()
    first_blank = first_too_long = None
    chunks = iter_chunks(sources, Manifest(fingerprint={}), needed, job.output.shard_rows, CHUNK_ROWS)
    for chunk in chunks:
        table = chunk.table
        n = table.num_rows
        report.rows += n
        rows_of[chunk.source.name] = rows_of.get(chunk.source.name, 0) + n
        texts = build_texts(table, job.input.text)
        blank = blank_mask(texts)
        n_blank = int(blank.sum())
        report.blank_rows += n_blank
        if n_blank and first_blank is None:
            first_blank = (chunk.source.name, chunk.first_row + int(np.flatnonzero(blank)[0]))
        sendable = np.flatnonzero(~blank)
        if not len(sendable):
            continue
        texts = add_prefix(texts, prefix)
        encoded = pc.dictionary_encode(texts.take(pa.array(sendable, pa.int64())))
        unique = encoded.dictionary
        row_text = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.array(counter.count(unique), dtype=np.int64)
        too_long, counts = over_limit(counter, unique, counts, input_tokens)
        if len(too_long):
            long_rows = np.isin(row_text, too_long)
            report.too_long_rows += int(long_rows.sum())
            if first_too_long is None:
                first_too_long = (chunk.source.name, chunk.first_row + int(sendable[np.flatnonzero(long_rows)[0]]))
            if limits.on_too_long == "truncate":  # exactly the runner's cut, so counts match a run
                cut = [counter.truncate(t, input_tokens) for t in unique.take(pa.array(too_long)).to_pylist()]
                counts[too_long] = np.minimum(counter.count(pa.array(cut, pa.string())), input_tokens)
            elif limits.on_too_long == "skip":
                report.skipped_rows += int(long_rows.sum())
                row_text = row_text[~long_rows]
        report.tokens += int(counts[row_text].sum())
        report.rows_to_embed += len(row_text)
        to_send = np.unique(row_text)
        if not len(to_send):
            continue
        # the run sends each distinct text once (in-flight sharing, memo, cache): first occurrences only
        to_send = to_send[seen.first_seen(_digests(unique, to_send), counts[to_send])]
        report.tokens_to_send += int(counts[to_send].sum())
        report.requests += len(pack(counts[to_send], model.batch_inputs, limits.batch_tokens))

    for f in report.files:
        f["rows"] = rows_of.get(f["name"], 0)
    report.skipped_rows += report.blank_rows
    report.tokens_saved_by_dedup = report.tokens - report.tokens_to_send
    report.unique_texts, report.unique_tokens = len(seen), seen.tokens
    if job.input.on_empty == "fail" and first_blank:
        report.warnings.append(
            f"input.on_empty = 'fail': the run would stop at {first_blank[0]} row {first_blank[1]} "
            f"({report.blank_rows} blank rows in all)"
        )
    if limits.on_too_long == "fail" and first_too_long:
        report.warnings.append(
            f"limits.on_too_long = 'fail': the run would stop at {first_too_long[0]} row {first_too_long[1]} "
            f"({report.too_long_rows} rows over {input_tokens} tokens in all)"
        )

    if price_per_million is not None:
        report.price_per_million_tokens, report.price_source = float(price_per_million), "argument"
    elif preset and preset.price_per_million_tokens is not None:
        report.price_per_million_tokens, report.price_source = preset.price_per_million_tokens, "catalog"
    if report.price_per_million_tokens is not None:
        report.estimated_cost_usd = report.tokens_to_send / 1e6 * report.price_per_million_tokens
    by_requests = report.requests / report.requests_per_minute
    by_tokens = report.tokens_to_send / report.tokens_per_minute
    report.eta_seconds = max(by_requests, by_tokens) * 60.0
    report.eta_bound = "tokens" if by_tokens > by_requests else "requests"
    return report


def plan(
    job: JobConfig,
    counter: TokenCounter,
    as_json: bool = False,
    price_per_million: float | None = None,
    prefix: str | None = None,
    max_tokens_per_input: int | None = None,
) -> int:
    """``batchembed plan``: print what a run of ``job`` would read, send and cost; returns 0."""
    report = estimate(job, counter, price_per_million, prefix, max_tokens_per_input)
    print(json.dumps(asdict(report), indent=2) if as_json else format_report(report))
    return 0


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {m:02d}m"
    days, h = divmod(hours, 24)
    return f"{days}d {h:02d}h"


def format_report(r: PlanReport) -> str:
    """The human-readable plan."""
    model = f"{r.model} ({r.provider}" + (f", {r.dimensions} dims)" if r.dimensions else ")")
    known = f"catalogue: {r.preset}" if r.preset else "not in the catalogue: no model checks"
    pct = f" ({r.tokens_saved_by_dedup / r.tokens:.1%})" if r.tokens else ""
    policy = {"truncate": "truncated", "skip": "skipped", "fail": "the run would stop"}[r.on_too_long]
    if r.estimated_cost_usd is not None:
        cost = f"${r.estimated_cost_usd:,.2f} at ${r.price_per_million_tokens:g} per 1M tokens ({r.price_source})"
    else:
        cost = "unknown (no price known for this model; pass one with --price USD_PER_1M_TOKENS)"
    lines = [
        f"plan for {model} -- {known}; nothing is sent",
        f"  files            {len(r.files):,}",
        f"  rows             {r.rows:,}",
        f"  blank rows       {r.blank_rows:,} (kept with a null vector, not sent)",
        f"  too long         {r.too_long_rows:,} rows over {r.input_tokens:,} tokens ({policy})",
        f"  rows to embed    {r.rows_to_embed:,}",
        f"  unique texts     {r.unique_texts:,} job-wide ({r.unique_tokens:,} tokens)",
        f"  tokens           {r.tokens:,} (every row)",
        f"  tokens to send   {r.tokens_to_send:,} (each distinct text once: dedup saves "
        f"{r.tokens_saved_by_dedup:,}{pct})",
        f"  requests         {r.requests:,} (at most {r.batch_inputs:,} inputs / {r.batch_tokens:,} tokens each)",
        f"  estimated cost   {cost}",
        f"  ETA              at least {_duration(r.eta_seconds)} at {r.requests_per_minute:,} requests/min and "
        f"{r.tokens_per_minute:,} tokens/min ({r.eta_bound} bound)",
    ]
    if r.prefix:
        lines.insert(1, f"  prefix           {r.prefix!r}")
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)
