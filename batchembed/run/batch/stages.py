"""A run of a ``tier = "batch"`` job: plan the items into pieces, submit and wait for the batches,
then write the units through the ordinary pipeline with the batches' answers.

Setup, the manifest, the lock, the report and ``_SUCCESS`` are the plain run's (``runner.JobRunner``);
what differs are its stages (``BatchStages``, given by ``batch_placement``):

1. **plan** (:mod:`.planner`): every chunk of the job's open units through the task's own
   ``prepare``; items no piece holds yet are cut into pieces in the ledger (:mod:`.ledger`). A plan
   already complete for this job and these inputs (:mod:`.plan_record`) is not made again: a poll
   reads no input;
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
from collections.abc import Callable
from typing import Any

from batchembed.errors import APIError, UsageError
from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.job.fingerprint import fingerprint_hash
from batchembed.run.batch import plan_record
from batchembed.run.batch.answers import BatchCodec, BatchResults
from batchembed.run.batch.client import job_client
from batchembed.run.batch.items import job_items
from batchembed.run.batch.ledger import COLLECTED, PLANNED, RUNNING, UPLOADED, UPLOADING, Ledger
from batchembed.run.batch.loop import BatchLoop
from batchembed.run.batch.planner import Planner
from batchembed.run.batch.shapes import OpenAIShape, job_shape, window_text
from batchembed.run.pipeline import LocalStages
from batchembed.run.placement import Canary, Placement
from batchembed.run.runner import JobRunner
from batchembed.run.stopping import Stopped


def batch_placement(job: Any, wait: bool = True, transport: Any = None) -> Placement:
    """How a batch-tier run goes: no canary up front (the first batch answer sets the vector size), its
    stages the batches then the ordinary pipeline; ``wait=False`` is ``run --no-wait``."""
    return Placement(
        stages=lambda runner: BatchStages(runner, wait=wait, transport=transport),
        canary=Canary.DEFERRED,
        seen_inputs=plan_record.seen_inputs,  # the inputs of a complete plan: a poll opens none of them
    )


class BatchStages:
    """The batch tier's stages: plan, submit and wait for the batches, then write the units they settled."""

    def __init__(self, runner: JobRunner, *, wait: bool = True, transport: Any = None) -> None:
        self.runner = runner
        self.wait = wait
        self.batch_transport = transport
        self.local = LocalStages(runner)  # the writing pass
        self.ledger: Ledger | None = None
        self.loop: BatchLoop | None = None  # this run's batches (what it collected, and billed)
        self.still_running = 0  # pieces not settled when this run ends
        self.counts: Counter = Counter()
        self._wake = asyncio.Event()

    def on_signal(self, sig: int) -> bool:
        """While waiting for the batches: stop waiting (they keep running at the provider); while writing,
        the runner's ordinary stop."""
        if self.local.pipeline is not None:
            return False
        self.runner.stopping = sig
        self._wake.set()
        self.runner.progress.line(
            f"{signal.Signals(sig).name}: stopped waiting. The batches keep running at the provider; run the same "
            "command again to collect them (batchembed cancel JOB cancels them)"
        )
        return True

    def stop(self) -> None:
        """A signal while writing: the ordinary stop."""
        self.local.stop()

    def abandon(self) -> None:
        self.local.abandon()

    async def run(self, sources, columns, retry_units) -> None:
        runner = self.runner
        store = runner.output.store
        fingerprint = fingerprint_hash(runner.manifest.fingerprint)
        shape = job_shape(runner.resolved)
        runner.stats.batch_window = window_text(shape.window)  # progress shows batches and the window, no ETA
        old = await asyncio.to_thread(Ledger.read, store)
        if old is not None and (runner.restart or old.fingerprint != fingerprint):
            await self._abandon(old, shape)
        self.ledger = ledger = await asyncio.to_thread(Ledger.open, store, fingerprint)
        items = job_items(runner.resolved, runner.task, shape)
        cap = min(shape.max_inputs, runner.job.model.batch_inputs or shape.max_inputs)
        planner = Planner(ledger, items, max_inputs=cap, max_bytes=shape.max_bytes, max_lines=shape.max_lines)
        sign = plan_record.signature(fingerprint, runner.job, runner.manifest.generation, sources, retry_units)
        waits = await asyncio.to_thread(plan_record.waits_for, store, sign)
        if waits is None:
            await asyncio.to_thread(plan_record.drop, store)
            await asyncio.to_thread(self._plan, planner, sources, columns, retry_units)
            if runner.stopping is None:  # complete: the next run (a poll) finds it instead of planning again
                await asyncio.to_thread(
                    plan_record.save, store, sign, runner.output.reading, runner.task.output_types, planner.waits
                )
        else:
            planner.waits = waits
            runner.progress.line(f"batch tier: inputs unchanged since the plan of {len(ledger.live())} batch pieces")
        client = job_client(runner.resolved, shape, self.batch_transport, runner.watch, runner.stops.pause)
        loop = BatchLoop(
            ledger,
            client,
            items,
            queue_inputs=runner.job.model.batch_queue_inputs or shape.queue_inputs,
            resubmits=runner.job.model.batch_resubmits,
            fallback=runner.job.model.batch_fallback,
            say=runner.progress.line,
        )
        self.loop = loop
        try:
            await self._batches(loop)
        finally:
            await client.aclose()
            runner.stats.tokens += loop.collected_tokens  # the summary's tokens: billed to this run's batches
            runner.stats.texts_bought += loop.collected_items
        if runner.stopping is not None:
            return
        settled = {p.name for p in ledger.pieces if p.settled}
        committed = runner.output.committed()  # (unit names without ``.parquet``)
        ready = {
            unit
            for unit, waits in planner.waits.items()
            if waits <= settled and unit.removesuffix(".parquet") not in committed
        }
        self.still_running = sum(1 for p in ledger.pieces if not p.settled)
        if not ready:
            return  # no unit to write yet: nothing read
        results = await asyncio.to_thread(BatchResults, ledger, items)
        vectors = runner.task.vectors
        if vectors is not None and vectors.dim is None:
            if results.dim is not None:
                vectors.learn(results.dim)
            elif ready:  # no batch answered anything: one online request (the canary) tells the vector size
                await runner.check_server(runner.manifest, Canary.RUN)
        runner.journal.codec = BatchCodec(runner.journal.codec, results, items, self.counts)
        await self.local.run(sources, columns, retry_units, units=lambda unit: unit.name in ready)

    async def _abandon(self, old: Ledger, shape: OpenAIShape) -> None:
        """``--restart`` (or another job's ledger): cancel its running batches, then forget it."""
        client = job_client(self.runner.resolved, shape, self.batch_transport)
        try:
            n = await BatchLoop(
                old, client, None, queue_inputs=0, resubmits=0, fallback="fail", say=self.runner.progress.line
            ).cancel()
        finally:
            await client.aclose()
        if n:
            self.runner.progress.line(
                f"cancelled {plural(n, 'batch')} of the earlier run (their finished lines are billed)"
            )
        await asyncio.to_thread(old.drop)

    def _plan(self, planner: Planner, sources, columns, retry_units) -> None:
        """The planning pass (a worker thread): the task's prepare on every open chunk, nothing sent."""
        planner.known()
        stats = self.runner.stats
        saved = (stats.tokens_saved, stats.rows_reused, stats.texts_reused)
        try:
            stream = self.runner.chunk_stream(sources, columns, retry_units)
            planner.plan(
                (chunk, self.runner.task.prepare(chunk)[1])
                for chunk in stream
                if self.runner.stopping is None  # Ctrl-C while planning: what is planned is kept, nothing submitted
            )
        finally:
            # the writing pass prepares the same chunks again and counts
            stats.tokens_saved, stats.rows_reused, stats.texts_reused = saved
        live = self.ledger.live()
        planned = sum(p.attempts[0].items for p in live)
        billed = sum(a.billed_items for p in live for a in p.attempts)
        history = len(self.ledger.pieces) - len(live)
        self.runner.progress.line(
            f"batch tier: {plural(len(live), 'batch')} planned for {plural(planned, 'input')} ({billed:,} already "
            "billed)"
            + (f"; {history} pieces of finished days are history (their texts are in the output)" if history else "")
        )

    async def _batches(self, loop: BatchLoop) -> None:
        """Rounds of submit / poll / collect until every piece is settled (``--no-wait``: one round)."""
        poll = self.runner.job.model.batch_poll_seconds
        while self.runner.stopping is None:
            try:  # a signal gives the round's remote calls the grace, then cancels it (the ledger is kill-safe)
                await self.runner.stops.interruptible(loop.round(), graced=True)
            except Stopped:
                return
            except APIError:
                if self.runner.stopping is None:
                    raise
                return  # the server stayed away past limits.outage_seconds: the run stops (exit 68)
            self._show()
            if self.ledger.all_settled() or not self.wait or self.runner.stopping is not None:
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
        self.runner.stats.pace = (
            f"batches {steps['done']} done, {steps[RUNNING] + steps['creating']} running, {queued} queued; "
            f"inputs {answered:,}/{planned:,} answered"
        )
        self.runner.progress.refresh()

    # ------------------------------------------------------------------------------------- ending

    def report(self) -> dict[str, Any]:
        """``_report.json``'s ``batch`` section."""
        return {"batch": self.batch_report()} if self.ledger is not None else {}

    def batch_report(self) -> dict[str, Any]:
        """``_report.json``'s ``batch`` section: batches, inputs and tokens billed, price against online."""
        totals = self.ledger.totals()
        shape = job_shape(self.runner.resolved)
        preset = self.runner.resolved.preset
        price = self.runner.job.model.price_per_million_tokens
        if price is None and preset is not None:
            price = preset.price_per_million_tokens
        online = None if price is None else round(totals["tokens_billed"] / 1e6 * price, 6)
        return {
            "provider": self.runner.model.provider,
            **totals,  # every day's batches (the ledger keeps their states)
            "items_billed_this_run": self.loop.collected_items if self.loop is not None else 0,
            "tokens_billed_this_run": self.loop.collected_tokens if self.loop is not None else 0,
            "still_running": self.still_running,
            "rows_answered_by_batches": self.counts["rows_from_batches"],
            "rows_failed_in_batches": self.counts["rows_failed_in_batches"],
            "rows_sent_online": self.counts["rows_sent_online"],
            "price_share_of_online": shape.discount,
            "cost_usd": None if online is None else round(online * shape.discount, 6),
            "cost_usd_online_equivalent": online,
        }

    def every_unit_done(self) -> bool:
        """The table is published once no batch runs any more (a reader never sees a half-bought job)."""
        return not self.still_running

    def conclude(self, conclude: Callable[[], int]) -> int:
        """Batches still running: exit 75 before anything is concluded (no _SUCCESS); else the run's ending,
        then the batches' figures."""
        if self.runner.stopping is None and self.still_running:
            s = self.runner.stats
            self.runner.progress.line(
                f"{plural(s.rows_embedded, 'row')} written; {plural(self.still_running, 'batch')} still running "
                "at the provider. "
                "Run the same command again later to collect them (exit code "
                f"{int(ExitCode.BATCHES_RUNNING)})"
            )
            return ExitCode.BATCHES_RUNNING
        code = conclude()
        if code == ExitCode.OK and self.ledger is not None:
            self.ledger.prune()
            plan_record.drop(self.ledger.store)  # (its pieces are the finished job's: a later run plans anew)
        if self.ledger is not None:
            t = self.ledger.totals()
            report = self.batch_report()
            cost = ""
            if report["cost_usd"] is not None:
                online = report["cost_usd_online_equivalent"]
                cost = f", ${report['cost_usd']:,.4f} at the batch price (${online:,.4f} online)"
            self.runner.progress.line(
                f"batches: {t['batches_created']:,} created, {plural(t['items_billed'], 'input')} and "
                f"{plural(t['tokens_billed'], 'token')} billed{cost}"
            )
        return code


def refuse_engines(shard: str | None, engine: str | None) -> None:
    """A batch-tier job runs in one process: the provider does the work, there is nothing to spread."""
    if shard is not None or engine == "ray":
        raise UsageError(
            'model.tier = "batch" runs in one process (the provider does the work): drop --shard / --engine ray'
        )


def say(text: str) -> None:
    """A line for the user of ``batchembed cancel``."""
    print(f"batchembed: {text}", file=sys.stderr, flush=True)
