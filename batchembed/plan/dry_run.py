"""``batchembed plan JOB.toml``: a dry run that reads the input the way a run would and sends nothing.

The plan builds the job's own task as a run does (``job.build_task``, from the same ``ResolvedJob``)
and drives its very ``prepare`` over the very chunks a run reads (``units.iter_chunks`` with the
the run's ``CHUNK_ROWS``): texts are built, prefixed, blank-checked, counted, cut and deduplicated
by the run's code, and requests are packed with ``batching.pack`` as the run packs them, so the
request and token figures are what a fresh run of the job would send (token figures are as good as
the job's tokenizer: the ``estimate`` counter errs on the high side). The task gets no provider and
an empty memo: ``prepare`` sends nothing and remembers nothing.

Embed jobs: each distinct text is counted once job-wide, as a run sends it: a run shares texts in
flight between chunks and remembers recent vectors (``cache.memory_mb``), and with ``[cache] path``
every vector. (Without a cache file, a duplicate further away than the memory memo reaches is paid
again, so for huge jobs with far-apart duplicates the figures are a lower bound.) Distinct texts
are tracked memory-bounded as 64-bit digests in numpy arrays, never a Python set of strings.

Rerank jobs: every (query, document) pair is sent, its tokens the document's plus the query's (the
query is counted once per document, as the server sees it); requests are the rerank task's own,
one query per request.

Policies that stop a run (``on_empty``/``on_too_long = "fail"``) are reported as warnings naming the
row where the run would stop; the figures then count an embed job's too-long texts whole, and leave
a rerank job's too-long pairs out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from batchembed.exitcodes import ExitCode
from batchembed.input.checks import check_inputs
from batchembed.input.chunks import CHUNK_ROWS, iter_chunks
from batchembed.input.discover import discover
from batchembed.input.read import check_columns
from batchembed.job.config import JobConfig
from batchembed.job.resolved import ResolvedJob, resolve
from batchembed.output.cache import key_column
from batchembed.output.figures import keys_frame
from batchembed.output.input_diff import GENERATION_SPAN, known_rows
from batchembed.output.manifest import Manifest
from batchembed.output.store import storage_options
from batchembed.plan.batch_tier import batch_estimate
from batchembed.plan.eta import SAMPLE_TEXTS, measure_local, paced, read_previous_report
from batchembed.plan.existing import existing_output, refuse_before_buying
from batchembed.plan.report import PlanReport, format_report
from batchembed.plan.seen import SeenTexts, text_digests
from batchembed.run.assemble import build_counter, build_task
from batchembed.run.progress import Heartbeat
from batchembed.stats import Stats
from batchembed.tasks import Piece, Request, Task
from batchembed.tasks.batching import pack
from batchembed.tasks.ids import id_column_name
from batchembed.tasks.memo import VectorMemo
from batchembed.tasks.texts import blank_mask
from batchembed.tasks.tokens import TokenCounter


class _CutCounter:
    """The job's token counter, counting the cuts ``prepare`` makes (a rerank task lists none itself)."""

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self.cuts = 0

    def __getattr__(self, name: str):
        return getattr(self._counter, name)

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut as the job's counter does, and count the cut."""
        self.cuts += 1
        return self._counter.truncate(text, max_tokens)


def plan_task(resolved: ResolvedJob, counter: TokenCounter) -> Task:
    """The job's task as a run builds it, without a provider and with an empty memo.

    Policies that would stop a run are relaxed so every row is counted: an embed task keeps blank
    rows and cuts too-long texts (recording each cut; the plan applies ``skip`` or ``fail`` to the
    figures); a rerank task skips too-long pairs where the job says ``fail``."""
    config = resolved.config
    if resolved.is_rerank:
        policy = "skip" if config.limits.on_too_long == "fail" else config.limits.on_too_long
        config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, on_too_long=policy))
    else:
        config = dataclasses.replace(
            config,
            input=dataclasses.replace(config.input, on_empty="skip"),
            limits=dataclasses.replace(config.limits, on_too_long="truncate"),
        )
    task = build_task(dataclasses.replace(resolved, config=config), None, counter, stats=Stats(), memo=VectorMemo(0))
    return task


class _EmbedTally:
    """Adds an embed piece to the report: rows, blanks, cuts, tokens, distinct texts, packed requests."""

    def __init__(self, report: PlanReport, resolved: ResolvedJob, ids: bool = False) -> None:
        self.report, self.resolved = report, resolved
        self.seen = SeenTexts()
        #: with ``ids`` (a refresh): every row read, as (id, text key), to count its rows by id
        self.rows: list | None = [] if ids else None
        self.sample: list[str] = []  # the first texts to send, as prepared: the local model is timed on them
        self.first_blank: tuple[str, int] | None = None
        self.first_too_long: tuple[str, int] | None = None

    def add(self, piece: Piece, requests: list[Request]) -> None:
        report, work, chunk = self.report, piece.work, piece.chunk
        policy = self.resolved.config.limits.on_too_long
        rows = work.row_to_text
        if self.rows is not None:
            ids = work.table.column(id_column_name(self.resolved.config)).combine_chunks()
            self.rows.append(keys_frame(ids, key_column(work.keys, rows, rows >= 0)))
        blank = rows < 0  # the plan's task cuts rather than skips: only blank rows have no text
        report.blank_rows += int(blank.sum())
        if blank.any() and self.first_blank is None:
            at = int(np.flatnonzero(blank)[0])
            self.first_blank = (chunk.source_at(at).name, int(work.positions[at]))
        cut = np.fromiter(work.truncated, np.int64, len(work.truncated))
        counts = work.tokens.copy()
        if len(cut):
            long_rows = np.isin(rows, cut)
            report.too_long_rows += int(long_rows.sum())
            if self.first_too_long is None:
                at = int(np.flatnonzero(long_rows)[0])
                self.first_too_long = (chunk.source_at(at).name, int(work.positions[at]))
            if policy == "fail":  # counted whole, as the run would have to send them
                counts[cut] = [work.truncated[int(i)][1] for i in cut]
            elif policy == "skip":
                report.skipped_rows += int(long_rows.sum())
                rows = np.where(long_rows, -1, rows)
        used = rows[rows >= 0]
        report.tokens += int(counts[used].sum())
        report.rows_to_embed += len(used)
        # the chunk's texts to send, as prepared; packed below across chunks, first occurrences only
        to_send = np.concatenate([r.items for r in requests]) if requests else np.zeros(0, np.int64)
        if policy == "skip" and len(cut):
            to_send = to_send[np.isin(to_send, used)]
        if not len(to_send):
            return
        # the run sends each distinct text once (in-flight sharing, memo, cache): first occurrences only
        to_send = to_send[self.seen.first_seen(text_digests(work.keys[to_send]), counts[to_send])]
        if len(self.sample) < SAMPLE_TEXTS:
            self.sample += [work.texts[i] for i in to_send[: SAMPLE_TEXTS - len(self.sample)]]
        report.tokens_to_send += int(counts[to_send].sum())
        limits = self.resolved.config.limits
        report.requests += len(pack(counts[to_send], self.resolved.model.batch_inputs, limits.batch_tokens))

    def finish(self) -> None:
        report, config = self.report, self.resolved.config
        report.skipped_rows += report.blank_rows
        report.tokens_saved_by_dedup = report.tokens - report.tokens_to_send
        report.unique_texts, report.unique_tokens = len(self.seen), self.seen.tokens
        if config.input.on_empty == "fail" and self.first_blank:
            report.warnings.append(
                f"input.on_empty = 'fail': the run would stop at {self.first_blank[0]} row {self.first_blank[1]} "
                f"({report.blank_rows} blank rows in all)"
            )
        if config.limits.on_too_long == "fail" and self.first_too_long:
            report.warnings.append(
                f"limits.on_too_long = 'fail': the run would stop at {self.first_too_long[0]} row "
                f"{self.first_too_long[1]} ({report.too_long_rows} rows over {report.input_tokens} tokens in all)"
            )


class _RerankTally:
    """Adds a rerank piece to the report: queries, pairs, blanks, cuts, and the task's own requests."""

    def __init__(self, report: PlanReport, resolved: ResolvedJob, counter: _CutCounter) -> None:
        self.report, self.resolved, self.counter = report, resolved, counter
        self.first_too_long: tuple[str, int] | None = None
        self.sample: list[str] = []  # the first documents to score: the local model is timed on them

    def add(self, piece: Piece, requests: list[Request]) -> None:
        report, work = self.report, piece.work
        report.queries += len(work.queries)
        report.pairs += len(work.documents)
        report.skipped_rows += piece.skipped
        if len(work.documents):
            blank = blank_mask(pa.array(work.documents, pa.string()))
            blank |= blank_mask(pa.array(work.queries, pa.string()))[work.pair_group]
            report.blank_pairs += int(blank.sum())
            dropped = np.flatnonzero(~work.sendable & ~blank)  # too long, under skip (or fail)
            report.too_long_pairs += len(dropped)
            if len(dropped) and self.first_too_long is None:
                self.first_too_long = (piece.chunk.source.name, int(work.positions[work.pair_row[dropped[0]]]))
        report.too_long_pairs += self.counter.cuts  # too long, under truncate
        self.counter.cuts = 0
        report.pairs_to_score += int(work.sendable.sum())
        if len(self.sample) < SAMPLE_TEXTS:
            sendable = np.flatnonzero(work.sendable)[: SAMPLE_TEXTS - len(self.sample)]
            self.sample += [work.documents[i] for i in sendable]
        report.tokens += sum(r.tokens for r in requests)
        report.requests += len(requests)

    def finish(self) -> None:
        report = self.report
        report.tokens_to_send = report.tokens
        if self.resolved.config.limits.on_too_long == "fail" and self.first_too_long:
            report.warnings.append(
                f"limits.on_too_long = 'fail': the run would stop at {self.first_too_long[0]} row "
                f"{self.first_too_long[1]} ({report.too_long_pairs} pairs over {report.input_tokens} tokens in all; "
                "the figures leave them out)"
            )


class _Doing:
    """What ``plan`` is doing now, for the line a log gets every 10 s (``progress.Heartbeat``)."""

    def __init__(self) -> None:
        self.now: Callable[[], str] = lambda: "loading the model and finding the inputs"

    def text(self) -> str:
        return f"plan: {self.now()}"


def estimate(
    job: JobConfig | ResolvedJob,
    counter: TokenCounter | None = None,
    price_per_million: float | None = None,
    restart: bool = False,
) -> PlanReport:
    """Stream the job's input through its task's ``prepare`` and compute the plan (no printing, nothing sent;
    a line every 10 s says what it is doing).

    ``counter``: the token counter to use instead of the job's own (``job.build_counter``). Raises
    ``ConfigError`` for a ``model.dimensions`` the model cannot return and ``InputError`` for missing
    files or columns, as a run would before sending anything.
    """
    doing = _Doing()
    with Heartbeat(doing.text):
        return _estimate(job, counter, price_per_million, restart, doing)


def _estimate(
    job: JobConfig | ResolvedJob,
    counter: TokenCounter | None,
    price_per_million: float | None,
    restart: bool,
    doing: _Doing,
) -> PlanReport:
    resolved = resolve(job)
    config, model, preset = resolved.config, resolved.model, resolved.preset
    counting = _CutCounter(counter or build_counter(resolved))
    task = plan_task(resolved, counting)
    report = PlanReport(
        provider=model.provider,
        model=model.name,
        preset=preset.id if preset else None,
        dimensions=config.model.dimensions or (preset.native_dim if preset else None),
        prefix="" if resolved.is_rerank else resolved.prefix,
        task="rerank" if resolved.is_rerank else "embed",
        input_tokens=resolved.input_tokens,
        on_too_long=config.limits.on_too_long,
        batch_inputs=model.batch_inputs,
        batch_tokens=config.limits.batch_tokens,
        requests_per_minute=model.requests_per_minute,
        tokens_per_minute=model.tokens_per_minute,
    )
    if preset and preset.max_input_tokens and report.input_tokens > preset.max_input_tokens:
        report.warnings.append(
            f"limits.input_tokens = {report.input_tokens} exceeds {preset.id}'s context of {preset.max_input_tokens} "
            f"tokens: longer texts will be refused by the server; set limits.input_tokens = {preset.max_input_tokens}"
        )
    if preset and preset.kind == "rerank" and not resolved.is_rerank:
        report.warnings.append(f"{preset.id} is a reranker, not an embedding model")
    if preset and preset.kind == "embed" and resolved.is_rerank:
        report.warnings.append(f"{preset.id} is an embedding model, not a reranker")

    doing.now = lambda: "checking the inputs (columns, types, every id)"
    # the output is the job's when its fingerprint is what a run's would be: with the job's own token counter
    own = task if counter is None else plan_task(resolved, _CutCounter(build_counter(resolved)))
    existing, refused = existing_output(resolved, own, restart)
    if refused:
        report.refused.append(refused)
    known = known_rows(existing.manifest if existing else None)
    sources = discover(config.input.path, storage_options(config), known=known, identity=config.input.identity)
    view = Manifest(fingerprint={})
    reading = sources
    first = 0
    if existing is not None:
        refusals, notes = existing.table_check()  # what a run would refuse or repair about the Delta table
        report.refused += refusals
        report.warnings += notes
        view, reading = existing.plan(sources, task, config.output.max_removed)
        report.refresh = existing.refresh
        if existing.refresh["refused"]:
            report.refused.append(existing.refresh["refused"])
        first = (existing.manifest.generation + 1) * GENERATION_SPAN  # names clear of every kept unit
    for src in reading:
        check_columns(src, task.columns, config)
    held = existing.held_ids(config, reading) if existing is not None and config.input.id else []
    check_inputs(config, reading, task.columns, held)  # the same refusals as `run` (ids, columns, text types)
    refuse_before_buying(report, config, existing, reading)
    report.files = [{"name": s.name, "format": s.format, "rows": s.rows} for s in reading]
    rows_of: dict[str, int] = {}
    by_id = existing is not None and not resolved.is_rerank
    tally = _RerankTally(report, resolved, counting) if resolved.is_rerank else _EmbedTally(report, resolved, by_id)
    chunks = iter_chunks(
        reading,
        view,
        task.columns,
        config.output.shard_rows,
        CHUNK_ROWS,
        task.group_key,
        pack_small_files=not resolved.is_rerank,  # as the run reads them
        first_ordinal=first,
    )
    doing.now = lambda: f"{report.rows:,} rows read and counted so far"
    for chunk in chunks:
        piece, requests = task.prepare(chunk)
        report.rows += piece.rows
        for src, a, b in chunk.segments():
            rows_of[src.name] = rows_of.get(src.name, 0) + b - a
        tally.add(piece, requests)
    tally.finish()
    if report.refresh:
        report.refresh["rows_reused"] = task.stats.rows_reused
        if by_id:  # the rows the refresh replaces against those it reads: by id, as the run will count them
            report.refresh["rows"] = existing.rows_by_id(id_column_name(config), tally.rows)
    for f in report.files:
        f["rows"] = rows_of.get(f["name"], 0)

    if price_per_million is not None:
        report.price_per_million_tokens, report.price_source = float(price_per_million), "argument"
    elif preset and preset.price_per_million_tokens is not None:
        report.price_per_million_tokens, report.price_source = preset.price_per_million_tokens, "catalog"
    if report.price_per_million_tokens is not None:
        report.estimated_cost_usd = report.tokens_to_send / 1e6 * report.price_per_million_tokens
    batch_estimate(report, resolved)
    if resolved.local_model is not None:  # bound by this machine's CPU: timed here, on the job's own texts
        rows = report.pairs_to_score if resolved.is_rerank else report.rows_to_embed
        doing.now = lambda: "timing the local model on the job's first texts"
        eta = measure_local(resolved.local_model, tally.sample, report.tokens_to_send, rows)
    else:  # bound by the limits the run paces to
        eta = paced(model, report.requests, report.tokens_to_send, read_previous_report(config))
        report.requests_per_minute, report.tokens_per_minute = (
            round(eta.requests_per_minute),
            round(eta.tokens_per_minute),
        )
    report.eta_seconds, report.eta_basis, report.eta_bound, report.eta_detail = (
        eta.seconds,
        eta.basis,
        eta.bound,
        eta.detail,
    )
    return report


def plan(
    job: JobConfig | ResolvedJob,
    counter: TokenCounter | None = None,
    as_json: bool = False,
    price_per_million: float | None = None,
    restart: bool = False,
) -> int:
    """``batchembed plan``: print what a run of ``job`` would read, send and cost; 0, or 1 when a run would
    refuse before buying anything (``PlanReport.refused``: the same sentences ``run`` would say: another
    job's settings, the removal guard, an output it cannot resume, the table's state, the column types)."""
    report = estimate(job, counter, price_per_million, restart)
    print(json.dumps(asdict(report), indent=2) if as_json else format_report(report))
    return ExitCode.FAILED if report.refused else ExitCode.OK
