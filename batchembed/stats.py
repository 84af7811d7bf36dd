"""The counters of one run (``Stats``): what the stages add up as they go (rows, tokens, requests,
retries, latencies, what a refresh found) and the ``_report.json`` document made of them. Every stage
updates them; ``run.progress`` shows them to a person or a log."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Stats:
    """Counters of one run; the runner updates them, progress and the report read them."""

    rows_total: int | None = None  # rows this run has to process (None while unknown, e.g. CSV)
    rows_resumed: int = 0  # rows already committed by earlier runs
    rows_embedded: int = 0
    rows_skipped: int = 0
    rows_recovered: int = 0  # rows whose answer an interrupted run left in the journal (not sent again)
    rows_resent: int = 0  # rows sent again because an interrupted run's answer never became durable
    rows_failed: int = 0
    rows_answered: float = 0.0  # rows whose requests have ended, credited request by request (for progress)
    rows_truncated: int = 0  # rows whose text was cut to fit (listed in _truncated.parquet)
    tokens: int = 0  # tokens sent in successful requests (server's count when it reports one)
    tokens_saved: int = 0  # tokens not sent thanks to de-duplication
    requests: int = 0  # HTTP requests sent, successful or not
    rows_reused: int = 0  # rows of changed files whose vector was already in the output (not bought)
    texts_bought: int = 0  # distinct texts answered by the server this run (sent and paid for)
    texts_reused: int = 0  # distinct texts whose vector was taken from the output (not bought)
    #: the refresh generation's figures (``output.figures``): files by state, rows by id once counted
    refresh: dict = field(default_factory=dict)
    tokens_current: int | None = None  # tokens for the table's current rows (``figures.current_tokens``)
    retries: Counter = field(default_factory=Counter)  # by status / error class
    latencies: list[float] = field(default_factory=list)
    #: The server's outages this run rode out (or stopped at): server, how it failed, seconds away, whether back
    outages: list[dict] = field(default_factory=list)
    in_flight: int = 0
    batch_window: str | None = None  # the batch tier: the provider's window ("24 h"), shown instead of an ETA
    pace: str = ""  # the limits being paced to, e.g. "600k tokens/min (server), 600 requests/min (configured)"
    concurrency: str = ""  # the requests kept in flight at the end, e.g. "32 in flight (auto)"
    threads: int | None = None  # the local model's threads: bound by the CPU, not by rate limits (None: remote)
    #: The local model's compute time per request (its own list, appended as it computes): the report's
    #: latency for a local model, whose round trip is mostly the wait for its one worker thread.
    compute_times: Sequence[float] | None = None
    started: float = field(default_factory=time.monotonic)

    def note_refresh(self, record: dict) -> None:
        """The refresh generation this run works on (``output.figures``: files by state, rows by id once
        counted), for the summary and ``_report.json``."""
        self.refresh = dict(record)

    @property
    def rows_bought(self) -> int:
        """Rows written this run whose vector was bought now (not reused from the output or the journal)."""
        return max(0, self.rows_embedded - self.rows_reused - self.rows_recovered)

    @property
    def rows_done(self) -> int:
        """Rows this run finished one way or another."""
        return self.rows_embedded + self.rows_skipped + self.rows_failed

    @property
    def rows_progress(self) -> int:
        """Rows to show as done: those written, or, between written pieces, those whose requests ended."""
        total = self.rows_total if self.rows_total is not None else float("inf")
        return max(self.rows_done, int(min(self.rows_answered, total)))

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def report(self, **extra: Any) -> dict[str, Any]:
        """The ``_report.json`` document."""
        times = self.compute_times if self.compute_times is not None else self.latencies
        lat = np.asarray(times) if times else None
        elapsed = self.elapsed
        return {
            **extra,
            "rows": {
                "embedded": self.rows_embedded,
                "skipped": self.rows_skipped,
                "failed": self.rows_failed,
                "already_done": self.rows_resumed,
                "reused_from_output": self.rows_reused,
                "bought": self.rows_bought,
            },
            "texts": {"bought": self.texts_bought, "reused_from_output": self.texts_reused},
            "refresh": self.refresh,
            "after_crash": {
                # rows an interrupted run had answered, read back from its journal instead of being sent
                "rows_recovered_from_journal": self.rows_recovered,
                # rows it had sent whose answers were lost with it (in flight at the crash): sent again
                "rows_sent_again": self.rows_resent,
            },
            "rows_truncated": self.rows_truncated,
            "tokens": self.tokens,  # billed this run (the batch tier: by the batches this run collected)
            "tokens_for_current_rows": self.tokens_current,
            "tokens_saved_by_dedup": self.tokens_saved,
            "requests": self.requests,
            "retries": dict(sorted(self.retries.items())),
            "outages": self.outages,
            "latency_seconds": {
                "p50": round(float(np.percentile(lat, 50)), 4) if lat is not None else None,
                "p95": round(float(np.percentile(lat, 95)), 4) if lat is not None else None,
                "measures": "request round trip"
                if self.compute_times is None
                else "the local model's compute time per request (not the wait for its thread)",
            },
            "elapsed_seconds": round(elapsed, 3),
            "rows_per_second": round(self.rows_done / elapsed, 1) if elapsed > 0 else None,
        }
