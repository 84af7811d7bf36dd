"""A run of a ``tier = "batch"`` job: plan the items into pieces, submit and wait for the batches,
then write the units through the ordinary pipeline with the batches' answers.

Setup, the manifest, the lock, the report and ``_SUCCESS`` are the plain run's (``runner.JobRunner``);
what differs is ``_pipeline``:

1. **plan** (:mod:`.planner`): every chunk of the job's open units through the task's own
   ``prepare``; items no piece holds yet are cut into pieces in the ledger (:mod:`.ledger`);
2. **batches** (:mod:`.loop`): submit, poll every ``model.batch_poll_seconds``, collect, resubmit
   what came back unanswered; ``--no-wait`` does one round and stops;
3. **write**: the ordinary pipeline over the units whose pieces are all settled, the task's journal
   codec reading the batches' answers (:mod:`.answers`); what the batches failed lands in
   ``_failed.parquet``, what they handed to the online tier is sent online.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import Counter
from typing import Any

from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.job.fingerprint import fingerprint_hash
from batchembed.output.manifest import Manifest
from batchembed.run.batch.answers import BatchCodec, BatchResults
from batchembed.run.batch.client import BatchClient
from batchembed.run.batch.items import Items, items_for
from batchembed.run.batch.ledger import COLLECTED, PLANNED, RUNNING, UPLOADED, UPLOADING, Ledger
from batchembed.run.batch.loop import BatchLoop
from batchembed.run.batch.planner import Planner
from batchembed.run.batch.shapes import OpenAIShape, shape_for, window_text
from batchembed.run.runner import JobRunner


def batch_shape(resolved: Any) -> OpenAIShape:
    """The job's provider batch shape, with the options every line (or the batch) carries."""
    job, model = resolved.config, resolved.model
    params: dict[str, Any] = dict(job.model.extra_body or {})
    if not job.is_rerank:
        dims = job.model.dimensions if job.model.dimensions_by == "server" else None
        if model.provider == "voyage":
            if dims is not None:
                params["output_dimension"] = dims
        else:
            if dims is not None:
                params["dimensions"] = dims
            if model.provider != "mistral" or job.model.encoding == "base64":
                # floats unless base64 is asked for: base64 in batch is implied by OpenAI, not shown
                params["encoding_format"] = "base64" if job.model.encoding == "base64" else "float"
    return shape_for(model.provider, model.name, job.is_rerank, params)


def make_items(resolved: Any, task: Any, shape: OpenAIShape) -> Items:
    """The task's items adapter, lines sized like the online requests (under the provider's cap)."""
    job = resolved.config
    server = job.model.dimensions_by == "server"
    dims = job.model.dimensions if server else None
    cut = None if server else job.model.dimensions
    return items_for(task, job.is_rerank, resolved.model.batch_inputs, job.limits.batch_tokens, dims, cut)


def make_client(resolved: Any, shape: OpenAIShape, transport: Any) -> BatchClient:
    """The batch API client for the job (its key read where every key is read: ``job.api_key``)."""
    from batchembed.run.assemble import api_key

    job = resolved.config
    return BatchClient(
        shape,
        resolved.model.base_url or "",
        api_key(resolved),
        timeout=job.model.timeout,
        max_retries=job.limits.max_retries,
        transport=transport,
    )


class BatchRunner(JobRunner):
    """A run of a batch-tier job (``wait=False``: ``run --no-wait``)."""

    def __init__(self, *args: Any, wait: bool = True, batch_transport: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait = wait
        self.batch_transport = batch_transport
        self.ledger: Ledger | None = None
        self.still_running = 0  # pieces not settled when this run ends
        self.counts: Counter = Counter()
        self._wake = asyncio.Event()

    async def _check_server(self, manifest: Manifest) -> None:
        """No canary: a batch-tier run sends nothing online (the first batch answer sets the vector size)."""

    def _on_signal(self, sig: int) -> None:
        if self._stages is not None or self.stopping is not None:
            super()._on_signal(sig)
            return
        self.stopping = sig
        self._wake.set()
        self.progress.line(
            f"{signal.Signals(sig).name}: stopped waiting. The batches keep running at the provider; run the same "
            "command again to collect them (batchembed cancel JOB cancels them)"
        )

    async def _pipeline(self, sources, columns, retry_units) -> None:
        store = self.output.store
        fingerprint = fingerprint_hash(self.manifest.fingerprint)
        shape = batch_shape(self.resolved)
        self.stats.batch_window = window_text(shape.window)  # progress shows batches and the window, no ETA
        old = await asyncio.to_thread(Ledger.read, store)
        if old is not None and (self.restart or old.fingerprint != fingerprint):
            await self._abandon(old, shape)
        self.ledger = ledger = await asyncio.to_thread(Ledger.open, store, fingerprint)
        items = make_items(self.resolved, self.task, shape)
        cap = min(shape.max_inputs, self.job.model.batch_inputs or shape.max_inputs)
        planner = Planner(ledger, items, max_inputs=cap, max_bytes=shape.max_bytes, max_lines=shape.max_lines)
        await asyncio.to_thread(self._plan, planner, sources, columns, retry_units)
        client = make_client(self.resolved, shape, self.batch_transport)
        loop = BatchLoop(
            ledger,
            client,
            items,
            queue_inputs=self.job.model.batch_queue_inputs or shape.queue_inputs,
            resubmits=self.job.model.batch_resubmits,
            fallback=self.job.model.batch_fallback,
            say=self.progress.line,
        )
        try:
            await self._batches(loop)
        finally:
            await client.aclose()
            self.stats.tokens += loop.collected_tokens  # the summary's tokens: billed to this run's batches
        if self.stopping is not None:
            return
        results = await asyncio.to_thread(BatchResults, ledger, items)
        settled = {p.name for p in ledger.pieces if p.settled}
        ready = {unit for unit, waits in planner.waits.items() if waits <= settled}
        self.still_running = sum(1 for p in ledger.pieces if not p.settled)
        if not self.job.is_rerank and getattr(self.task, "dim", 0) is None:
            if results.dim is not None:
                self.task.dim = results.dim
            elif ready:  # no batch answered anything: one online request (the canary) tells the vector size
                await super()._check_server(self.manifest)
        self.journal.codec = BatchCodec(self.journal.codec, results, items, self.counts)
        self.units = lambda unit: unit.name in ready
        await super()._pipeline(sources, columns, retry_units)

    async def _abandon(self, old: Ledger, shape: OpenAIShape) -> None:
        """``--restart`` (or another job's ledger): cancel its running batches, then forget it."""
        client = make_client(self.resolved, shape, self.batch_transport)
        try:
            n = await BatchLoop(
                old, client, None, queue_inputs=0, resubmits=0, fallback="fail", say=self.progress.line
            ).cancel()
        finally:
            await client.aclose()
        if n:
            self.progress.line(f"cancelled {plural(n, 'batch')} of the earlier run (their finished lines are billed)")
        await asyncio.to_thread(old.drop)

    def _plan(self, planner: Planner, sources, columns, retry_units) -> None:
        """The planning pass (a worker thread): the task's prepare on every open chunk, nothing sent."""
        planner.known()
        saved = self.stats.tokens_saved
        allocate = getattr(self.task, "allocate_answers", None)
        if allocate is not None:
            self.task.allocate_answers = False  # the answers come later, in the writing pass
        try:
            stream = self._chunk_stream(sources, columns, retry_units)
            planner.plan(
                (chunk, self.task.prepare(chunk)[1])
                for chunk in stream
                if self.stopping is None  # Ctrl-C while planning: what is planned is kept, nothing submitted
            )
        finally:
            self.stats.tokens_saved = saved  # the writing pass prepares the same chunks again and counts
            if allocate is not None:
                self.task.allocate_answers = allocate
        planned = sum(p.attempts[0].items for p in self.ledger.pieces)
        self.progress.line(
            f"batch tier: {plural(len(self.ledger.pieces), 'batch')} planned for {plural(planned, 'input')} "
            f"({self.ledger.totals()['items_billed']:,} already billed)"
        )

    async def _batches(self, loop: BatchLoop) -> None:
        """Rounds of submit / poll / collect until every piece is settled (``--no-wait``: one round)."""
        poll = self.job.model.batch_poll_seconds
        while self.stopping is None:
            await loop.round()
            self._show()
            if self.ledger.all_settled() or not self.wait or self.stopping is not None:
                return
            with contextlib.suppress(TimeoutError):  # woken early by a signal
                await asyncio.wait_for(self._wake.wait(), poll)

    def _show(self) -> None:
        """The batches' state in the progress bar's postfix (and the periodic log line)."""
        steps = Counter(
            "done" if p.settled else p.current.step if p.current.step != COLLECTED else RUNNING
            for p in self.ledger.pieces
        )
        queued = steps[PLANNED] + steps[UPLOADING] + steps[UPLOADED]
        answered = sum(a.ok for p in self.ledger.pieces for a in p.attempts)
        planned = sum(p.attempts[0].items for p in self.ledger.pieces)
        self.stats.pace = (
            f"batches {steps['done']} done, {steps[RUNNING] + steps['creating']} running, {queued} queued; "
            f"inputs {answered:,}/{planned:,} answered"
        )
        self.progress.refresh()

    # ------------------------------------------------------------------------------------- ending

    def _report(self, outstanding: int) -> dict[str, Any]:
        report = super()._report(outstanding)
        if self.ledger is not None:
            report["batch"] = self.batch_report()
        return report

    def batch_report(self) -> dict[str, Any]:
        """``_report.json``'s ``batch`` section: batches, inputs and tokens billed, price against online."""
        totals = self.ledger.totals()
        shape = batch_shape(self.resolved)
        preset = self.resolved.preset
        price = self.job.model.price_per_million_tokens
        if price is None and preset is not None:
            price = preset.price_per_million_tokens
        online = None if price is None else round(totals["tokens_billed"] / 1e6 * price, 6)
        return {
            "provider": self.model.provider,
            **totals,
            "still_running": self.still_running,
            "rows_answered_by_batches": self.counts["rows_from_batches"],
            "rows_failed_in_batches": self.counts["rows_failed_in_batches"],
            "rows_sent_online": self.counts["rows_sent_online"],
            "price_share_of_online": shape.discount,
            "cost_usd": None if online is None else round(online * shape.discount, 6),
            "cost_usd_online_equivalent": online,
        }

    def _every_unit_done(self) -> bool:
        """The table is published once no batch runs any more (a reader never sees a half-bought job)."""
        return not self.still_running

    def _conclude(self) -> int:
        if self.stopping is None and self.still_running:
            s = self.stats
            self.progress.line(
                f"{plural(s.rows_embedded, 'row')} written; {plural(self.still_running, 'batch')} still running "
                "at the provider. "
                "Run the same command again later to collect them (exit code "
                f"{int(ExitCode.BATCHES_RUNNING)})"
            )
            return ExitCode.BATCHES_RUNNING
        code = super()._conclude()
        if code == ExitCode.OK and self.ledger is not None:
            self.ledger.prune()
        if self.ledger is not None:
            t = self.ledger.totals()
            report = self.batch_report()
            cost = ""
            if report["cost_usd"] is not None:
                online = report["cost_usd_online_equivalent"]
                cost = f", ${report['cost_usd']:,.4f} at the batch price (${online:,.4f} online)"
            self.progress.line(
                f"batches: {t['batches_created']:,} created, {plural(t['items_billed'], 'input')} and "
                f"{plural(t['tokens_billed'], 'token')} billed{cost}"
            )
        return code


def refuse_engines(shard: str | None, engine: str | None) -> None:
    """A batch-tier job runs in one process: the provider does the work, there is nothing to spread."""
    from batchembed.errors import UsageError

    if shard is not None or engine == "ray":
        raise UsageError(
            'model.tier = "batch" runs in one process (the provider does the work): drop --shard / --engine ray'
        )


def say(text: str) -> None:
    """A line for the user of ``batchembed cancel``."""
    print(f"batchembed: {text}", file=sys.stderr, flush=True)
