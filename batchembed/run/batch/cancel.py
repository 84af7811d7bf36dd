"""``batchembed cancel JOB`` and the batches part of ``batchembed status``: read the ledger, ask the
provider to cancel what runs; never write shards or the manifest."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.job.config import JobConfig
from batchembed.job.resolved import resolve
from batchembed.output.store import open_store
from batchembed.run.batch.client import job_client
from batchembed.run.batch.ledger import Ledger
from batchembed.run.batch.loop import BatchLoop
from batchembed.run.batch.shapes import job_shape


def say(text: str) -> None:
    """One line for the user."""
    print(f"batchembed: {text}", file=sys.stderr, flush=True)


def cancel(job: JobConfig, transport: Any = None) -> int:
    """Cancel this job's running batches. Finished lines stay in their outputs (and are billed); ``run``
    again collects them and submits the rest again."""
    ledger = Ledger.read(open_store(job))
    running = [p for p in ledger.pieces if not p.settled and p.current.batch_id] if ledger else []
    if not running:
        say(f"{job.output.path}: no batches running for this job")
        return ExitCode.OK
    resolved = resolve(job)
    client = job_client(resolved, job_shape(resolved), transport)
    loop = BatchLoop(ledger, client, None, queue_inputs=0, resubmits=0, fallback="fail", say=say)

    async def go() -> int:
        try:
            return await loop.cancel()
        finally:
            await client.aclose()

    n = asyncio.run(go())
    say(
        f"asked the provider to cancel {plural(n, 'batch')}; what they finished is kept. "
        "`batchembed run` collects it and submits the rest again"
    )
    return ExitCode.OK


def batch_status(store: Any) -> dict[str, Any] | None:
    """The batches of an output as ``status`` shows them (None when the job never used the batch tier)."""
    ledger = Ledger.read(store)
    if ledger is None:
        return None
    pieces = []
    for p in ledger.pieces:
        a = p.current
        pieces.append(
            {
                "piece": p.name,
                "attempt": a.n,
                "step": "done" if p.settled else a.step,
                "batch_id": a.batch_id,
                "provider_status": a.status or None,
                "inputs": a.items,
                "answered": sum(x.ok for x in p.attempts),
                "failed": sum(x.failed for x in p.attempts),
            }
        )
    return {**ledger.totals(), "running": sum(1 for p in ledger.pieces if not p.settled), "pieces": pieces}


def print_batch_status(doc: dict[str, Any]) -> None:
    """The human form of :func:`batch_status`."""
    print(
        f"batches:  {doc['batches_created']:,} created, {doc['running']:,} not finished; "
        f"{doc['items_billed']:,} inputs and {doc['tokens_billed']:,} tokens billed"
    )
    for p in doc["pieces"]:
        state = p["provider_status"] or p["step"]
        where = f"batch {p['batch_id']}, {state}" if p["batch_id"] else "not created yet"
        print(
            f"  {p['piece']} attempt {p['attempt']}: {p['step']} ({where}); "
            f"{p['answered']:,}/{p['inputs']:,} answered, {p['failed']:,} failed"
        )
