"""Submit, poll, collect: moves every piece of the ledger one step at a time, saving before and after
each remote call.

    planned --(intent)--> uploading --POST /files--> uploaded --(intent)--> creating
        --(list: ours already?)--POST /batches--> running --GET--> ... --download--> collected

The failpoints (``BATCHEMBED_FAILPOINT``) sit between every remote call and the save that follows
it, where a kill hurts most; the kill tests stop a real process at each of them. The queue limit is
kept by submitting a planned piece only while the items the provider holds leave room for it; a
batch refused over a quota (a 429 at creation, or ``failed`` with ``token_limit_exceeded``) is
created again at a later round, never counted as bad data.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa

from batchembed.errors import TerminalAPIError
from batchembed.failpoints import failpoint
from batchembed.human import plural
from batchembed.run.batch.client import BatchClient, QueueFull
from batchembed.run.batch.collect import collect, custom_id, finalize
from batchembed.run.batch.items import Items
from batchembed.run.batch.ledger import (
    COLLECTED,
    CREATING,
    PLANNED,
    RETRY,
    RUNNING,
    UPLOADED,
    UPLOADING,
    Ledger,
    Piece,
    now,
)
from batchembed.run.batch.ledger import (
    FAILED as FAILED_ITEM,
)
from batchembed.run.batch.shapes import CANCELLED, EXPIRED, FAILED, PENDING, BatchView

#: The kill-test hooks around every remote call of the tier, in the order a batch meets them
#: (``failpoints.failpoint``); the kill tests and ``benchmarks/batch_tier.py`` go through this list.
FAILPOINTS = (
    "batch-before-upload",
    "batch-after-upload",
    "batch-before-create",
    "batch-after-create",
    "batch-after-poll",
    "batch-after-download",
    "batch-after-results",
)

#: How far back before a creation intent the list is scanned (clocks of two machines differ).
CLOCK_MARGIN = 600.0


class BatchLoop:
    """One job's batches: ``round()`` advances each piece as far as it can go now."""

    def __init__(
        self,
        ledger: Ledger,
        client: BatchClient,
        items: Items,
        *,
        queue_inputs: int,
        resubmits: int,
        fallback: str,
        say: Callable[[str], None],
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.items = items
        self.queue_inputs = queue_inputs
        self.resubmits = resubmits
        self.fallback = fallback
        self.say = say
        self.queue_full = False  # the provider refused a creation this round
        self.collected_tokens = 0  # tokens billed by the batches this run collected
        self.collected_items = 0  # inputs (distinct texts, or pairs) billed by them

    async def round(self) -> None:
        """Advance every piece not yet settled (in order: the earliest pieces are submitted first)."""
        self.queue_full = False
        for piece in self.ledger.pieces:
            if not piece.settled:
                await self._advance(piece)

    async def _advance(self, piece: Piece) -> None:
        a = piece.current
        if a.step == PLANNED:
            held = self.ledger.enqueued_items()
            if self.queue_full or (held and held + a.items > self.queue_inputs):
                return  # the queue has no room for it yet: a later round submits it
            a.step, a.upload_at = UPLOADING, now()
            await self._save(piece)
        if a.step == UPLOADING:
            data = self._jsonl(piece)
            failpoint("batch-before-upload")
            a.file_id = await self.client.upload(f"batchembed-{self.ledger.tag}-{piece.name}-a{a.n}.jsonl", data)
            failpoint("batch-after-upload")
            a.step = UPLOADED
            await self._save(piece)
        scan = True  # an intent found on entry may be a creation a killed run made: look for it first
        if a.step == UPLOADED:
            if self.queue_full:
                return
            a.step, a.create_at = CREATING, now()
            await self._save(piece)
            scan = False  # made just now, by this process: no creation can have happened yet
        if a.step == CREATING and not await self._create(piece, scan):
            return
        if a.step == RUNNING:
            view = await self.client.get(a.batch_id)
            failpoint("batch-after-poll")
            if view.state == PENDING:
                if view.status != a.status or view.done != a.done_lines:
                    if view.status != a.status:
                        self.say(f"batch {a.batch_id} ({piece.name}): {view.status}")
                    a.status, a.done_lines = view.status, view.done
                    await self._save(piece)
                return
            if view.over_quota:
                self.say(
                    f"batch {a.batch_id} ({piece.name}) was refused over the provider's queue quota "
                    f"({', '.join(view.error_codes)}): it is created again once the queue has room"
                )
                a.refused.append(a.batch_id)
                a.batch_id, a.tries, a.step, a.status = None, a.tries + 1, UPLOADED, ""
                self.queue_full = True
                await self._save(piece)
                return
            if view.state == FAILED:
                raise TerminalAPIError(
                    f"batch {a.batch_id} ({piece.name}) failed at the provider: "
                    f"{view.error_message or view.status} ({', '.join(view.error_codes) or 'no error code'}). "
                    "Fix what it says and run again (a changed job starts its batches afresh; --restart does too)"
                )
            await self._collect(piece, view)

    async def _create(self, piece: Piece, scan: bool) -> bool:
        """Find this attempt's batch on the list (``scan``: a killed run may have created it), else create it."""
        a = piece.current
        tag = piece.tag()

        def ours(view: BatchView) -> bool:
            if view.id in a.refused:
                return False
            meta = view.metadata
            if meta.get("batchembed_job") == self.ledger.tag and meta.get("batchembed_piece") == tag:
                return True
            # the second key: one uploaded file per attempt, so a batch of our file (not refused) is ours
            return view.input_file is not None and view.input_file == a.file_id

        view = await self.client.find(ours, (a.create_at or now()) - CLOCK_MARGIN) if scan else None
        if view is None:
            failpoint("batch-before-create")
            try:
                view = await self.client.create(a.file_id, {"batchembed_job": self.ledger.tag, "batchembed_piece": tag})
            except QueueFull as exc:
                self.say(f"{piece.name}: the provider's queue is full ({exc}); submitting again at the next round")
                a.step = UPLOADED
                self.queue_full = True
                await self._save(piece)
                return False
            failpoint("batch-after-create")
        else:
            self.say(f"{piece.name}: found batch {view.id} created by an interrupted run; not creating another")
        a.batch_id, a.step, a.status = view.id, RUNNING, view.status
        await self._save(piece)
        self.say(
            f"batch {view.id} ({piece.name}, attempt {a.n}): submitted {plural(a.items, 'input')} in "
            f"{plural(a.lines, 'line')}"
        )
        return True

    async def _collect(self, piece: Piece, view: BatchView) -> None:
        """Download both files, keep one status per item, plan the next attempt for what came back unanswered."""
        a = piece.current
        # both files go to temporary files as they arrive and are read back a line at a time (never whole)
        with (
            tempfile.TemporaryFile(prefix="batchembed-") as output,
            tempfile.TemporaryFile(prefix="batchembed-") as errors,
        ):
            for file_id, into in ((view.output_file, output), (view.error_file, errors)):
                if file_id:
                    await self.client.download(file_id, into)
                    into.seek(0)
            failpoint("batch-after-download")
            sent = await asyncio.to_thread(self.ledger.items, piece)
            why = {EXPIRED: "batch_expired", CANCELLED: "batch_cancelled"}.get(view.state, "no answer")
            got = await asyncio.to_thread(collect, self.items, sent, (output, errors), why)
        last = a.n >= self.resubmits
        results = finalize(got.results, last, self.fallback)
        await asyncio.to_thread(self.ledger.write_results, piece, a.n, results)
        failpoint("batch-after-results")
        a.step, a.status = COLLECTED, view.status
        status = np.array(results.column("status").to_pylist(), dtype=object)
        retry = status == RETRY
        a.billed_items, a.billed_tokens, a.ok = got.billed_items, got.billed_tokens, got.ok
        self.collected_tokens += got.billed_tokens
        self.collected_items += got.billed_items
        a.failed, a.retry = int((status == FAILED_ITEM).sum()), int(retry.sum())
        if retry.any():
            nxt = self._next_items(sent, retry, got.split[retry])
            self.say(
                f"batch {view.id} ({piece.name}) {view.status}: {got.ok:,} answered, {int(retry.sum()):,} "
                f"submitted again (attempt {a.n + 1} of {self.resubmits})"
            )
            n_lines = int(nxt.column("line").to_numpy().max()) + 1
            await asyncio.to_thread(self.ledger.retry, piece, nxt, n_lines, int(nxt.column("tokens").to_numpy().sum()))
            return
        piece.settled = True
        await self._save(piece)
        reasons = ""
        if a.failed:
            errors = results.column("error").drop_null().to_pylist()
            reasons = f" ({errors[0]}{', ...' if len(set(errors)) > 1 else ''})"
        self.say(f"batch {view.id} ({piece.name}) {view.status}: {got.ok:,} answered, {a.failed:,} failed{reasons}")

    def _next_items(self, sent: pa.Table, retry: np.ndarray, alone: np.ndarray) -> pa.Table:
        """The items to send again: their old lines kept, except those of a refused line, one per line."""
        kept = sent.filter(pa.array(retry))
        old = kept.column("line").to_numpy().astype(np.int64)
        lines = np.where(alone, -1, old)
        _, packed = np.unique(old[~alone], return_inverse=True)
        lines[~alone] = packed
        base = int(packed.max()) + 1 if len(packed) else 0
        lines[alone] = base + np.arange(int(alone.sum()))
        return self.items.table(
            kept.column("key").to_pylist(),
            kept.column("text").to_pylist(),
            kept.column("query").to_pylist(),
            kept.column("tokens").to_numpy(),
            lines,
        )

    def _jsonl(self, piece: Piece) -> bytes:
        """The attempt's input file: one request per line, its items in index order."""
        table = self.ledger.items(piece)
        lines = table.column("line").to_numpy()
        texts = table.column("text").to_pylist()
        queries = table.column("query").to_pylist()
        starts = np.r_[0, np.flatnonzero(np.diff(lines)) + 1, len(lines)]
        out = []
        shape = self.client.shape
        for a, b in itertools.pairwise(starts):
            body = self.items.body(texts[a:b], queries[a])
            out.append(orjson.dumps(shape.line(custom_id(int(lines[a])), body)))
        return b"\n".join(out) + b"\n"

    async def _save(self, piece: Piece) -> None:
        await asyncio.to_thread(self.ledger.save, piece)

    # -------------------------------------------------------------------------------- cancel

    async def cancel(self) -> int:
        """Ask the provider to cancel this job's running batches; the number asked."""
        n = 0
        for piece in self.ledger.pieces:
            a = piece.current
            if piece.settled or a.step != RUNNING:
                continue
            view = await self.client.cancel(a.batch_id)
            self.say(f"batch {a.batch_id} ({piece.name}): {view.status}")
            n += 1
        return n
