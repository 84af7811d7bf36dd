"""What a person (tqdm bar) or a log (plain periodic lines) sees while a job runs, and the final report."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm


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
    rows_truncated: int = 0  # rows whose text was cut to fit (listed in _truncated.parquet)
    tokens: int = 0  # tokens sent in successful requests (server's count when it reports one)
    tokens_saved: int = 0  # tokens not sent thanks to de-duplication
    requests: int = 0  # HTTP requests sent, successful or not
    rows_reused: int = 0  # rows of changed files whose vector was already in the output (not bought)
    rows_removed: int = 0  # rows taken out of the output by this refresh (changed or deleted inputs)
    refresh: dict = field(default_factory=dict)  # files added/changed/removed/unchanged, generation
    retries: Counter = field(default_factory=Counter)  # by status / error class
    latencies: list[float] = field(default_factory=list)
    in_flight: int = 0
    pace: str = ""  # the limits being paced to, e.g. "tokens/min 600k (server), requests/min 600 (configured)"
    started: float = field(default_factory=time.monotonic)

    def note_refresh(self, diff: Any, manifest: Any) -> None:
        """What this run found changed in the inputs (for the summary and ``_report.json``)."""
        self.rows_removed = diff.rows_removed
        self.refresh = {**diff.summary(), "generation": manifest.generation}

    @property
    def rows_done(self) -> int:
        """Rows this run finished one way or another."""
        return self.rows_embedded + self.rows_skipped + self.rows_failed

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def report(self, **extra: Any) -> dict[str, Any]:
        """The ``_report.json`` document."""
        lat = np.asarray(self.latencies) if self.latencies else None
        elapsed = self.elapsed
        return {
            **extra,
            "rows": {
                "embedded": self.rows_embedded,
                "skipped": self.rows_skipped,
                "failed": self.rows_failed,
                "already_done": self.rows_resumed,
                "reused_from_output": self.rows_reused,
                "bought": max(0, self.rows_embedded - self.rows_reused - self.rows_recovered),
                "removed": self.rows_removed,
            },
            "refresh": self.refresh,
            "after_crash": {
                # rows an interrupted run had answered, read back from its journal instead of being sent
                "rows_recovered_from_journal": self.rows_recovered,
                # rows it had sent whose answers were lost with it (in flight at the crash): sent again
                "rows_sent_again": self.rows_resent,
            },
            "rows_truncated": self.rows_truncated,
            "tokens": self.tokens,
            "tokens_saved_by_dedup": self.tokens_saved,
            "requests": self.requests,
            "retries": dict(sorted(self.retries.items())),
            "latency_seconds": {
                "p50": round(float(np.percentile(lat, 50)), 4) if lat is not None else None,
                "p95": round(float(np.percentile(lat, 95)), 4) if lat is not None else None,
            },
            "elapsed_seconds": round(elapsed, 3),
            "rows_per_second": round(self.rows_done / elapsed, 1) if elapsed > 0 else None,
        }


class Progress:
    """A tqdm bar on a terminal; plain lines every ``interval`` seconds otherwise or with ``quiet``."""

    def __init__(self, stats: Stats, quiet: bool = False, interval: float = 10.0, stream: TextIO | None = None):
        self.stats = stats
        self.stream = stream or sys.stderr
        self.bar_mode = not quiet and self.stream.isatty()
        self.interval = interval
        self._last_line = time.monotonic()
        self._bar: tqdm | None = None

    def start(self) -> None:
        """Open the bar (terminal mode)."""
        if self.bar_mode:
            self._bar = tqdm(total=self.stats.rows_total, unit="row", file=self.stream, dynamic_ncols=True)

    def refresh(self) -> None:
        """Called periodically by the runner."""
        s = self.stats
        elapsed = max(s.elapsed, 1e-9)
        if self._bar is not None:
            if self._bar.total != s.rows_total:
                self._bar.total = s.rows_total
            self._bar.n = s.rows_done
            self._bar.set_postfix(
                tok_s=f"{s.tokens / elapsed:,.0f}",
                in_flight=s.in_flight,
                retries=sum(s.retries.values()),
                pace=s.pace,
                refresh=False,
            )
            self._bar.refresh()
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            self.line(self.status_line())

    def status_line(self) -> str:
        """One line of counters for logs."""
        s = self.stats
        elapsed = max(s.elapsed, 1e-9)
        total = f"/{s.rows_total:,}" if s.rows_total is not None else ""
        return (
            f"rows {s.rows_done:,}{total} ({s.rows_done / elapsed:,.0f}/s), tokens {s.tokens:,} "
            f"({s.tokens / elapsed:,.0f}/s), in flight {s.in_flight}, retries {sum(s.retries.values())}, "
            f"failed {s.rows_failed}, truncated {s.rows_truncated}" + (f"; {s.pace}" if s.pace else "")
        )

    def line(self, text: str) -> None:
        """Print a message without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(f"batchembed: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
