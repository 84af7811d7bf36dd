"""What a person (tqdm bar) or a log (plain periodic lines) sees while a job runs, and the final report."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from batchembed.human import duration, per_minute, per_second, short


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
    rows_removed: int = 0  # rows taken out of the output by this refresh (changed or deleted inputs)
    refresh: dict = field(default_factory=dict)  # files added/changed/removed/unchanged, generation
    retries: Counter = field(default_factory=Counter)  # by status / error class
    latencies: list[float] = field(default_factory=list)
    in_flight: int = 0
    pace: str = ""  # the limits being paced to, e.g. "600k tokens/min (server), 600 requests/min (configured)"
    threads: int | None = None  # the local model's threads: bound by the CPU, not by rate limits (None: remote)
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
        self._since = stats.started  # until start(): rates count from the run's start
        self._bar: tqdm | None = None

    def start(self) -> None:
        """Open the bar (terminal mode); rates and the ETA count from here (setup is not sending)."""
        self._since = time.monotonic()
        if self.bar_mode:
            # smoothing=0: the ETA divides what is left by the average rate since the start, not by the
            # rate of the last few updates (rows are counted as requests end, in steps)
            self._bar = tqdm(
                total=self.stats.rows_total,
                unit="row",
                unit_scale=not self.stats.rows_total or self.stats.rows_total >= 100_000,  # 1.2M/3.0M; 120/3000
                smoothing=0,
                file=self.stream,
                dynamic_ncols=True,
            )

    def _elapsed(self) -> float:
        return max(time.monotonic() - self._since, 1e-9)

    def eta(self) -> str:
        """Time left at the average rate so far: "ETA 4m 10s", or why it is not known yet."""
        s = self.stats
        if s.rows_total is None:
            return "ETA unknown (the row count is learned while reading)"
        done = s.rows_progress
        if done == 0:
            return "ETA after the first answers"
        left = max(s.rows_total - done, 0)
        return f"ETA {duration(left / (done / self._elapsed()))}"

    def bound_by(self) -> str:
        """What sets the speed: the local model's threads, or the rate limits paced to."""
        s = self.stats
        if s.threads is not None:
            return f"local model on {s.threads} thread{'s' if s.threads != 1 else ''}"
        return f"pacing to {s.pace}" if s.pace else ""

    def refresh(self) -> None:
        """Called periodically by the runner."""
        s = self.stats
        elapsed = self._elapsed()
        if self._bar is not None:
            if self._bar.total != s.rows_total:
                self._bar.total = s.rows_total
            self._bar.n = s.rows_progress
            bound = self.bound_by()
            self._bar.set_postfix_str(
                f"{per_minute(s.tokens / elapsed * 60, 'tokens')}, {s.in_flight} in flight, "
                f"{sum(s.retries.values())} retries" + (f"; {bound}" if bound else ""),
                refresh=False,
            )
            self._bar.refresh()
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            self.line(self.status_line())

    def status_line(self) -> str:
        """One line of counters for logs, in human units."""
        s = self.stats
        elapsed = self._elapsed()
        total = f"/{s.rows_total:,}" if s.rows_total is not None else ""
        bound = self.bound_by()
        return (
            f"rows {s.rows_progress:,}{total} ({per_second(s.rows_progress / elapsed, 'rows')}, {self.eta()}), "
            f"{short(s.tokens)} tokens ({per_minute(s.tokens / elapsed * 60, 'tokens')}), "
            f"in flight {s.in_flight}, retries {sum(s.retries.values())}, failed {s.rows_failed}, "
            f"truncated {s.rows_truncated}" + (f"; {bound}" if bound else "")
        )

    def summary(self, verb: str, where: str) -> str:
        """The closing line of a run: what was done, how fast, and what bound the speed."""
        s = self.stats
        elapsed = max(s.elapsed, 1e-9)
        rate = per_second(s.rows_done / self._elapsed(), "rows")
        if s.threads is not None:
            speed = f"{rate}, local model on {s.threads} thread{'s' if s.threads != 1 else ''}"
        else:
            speed = f"{rate}, {per_minute(s.requests / self._elapsed() * 60, 'requests')}"
        return (
            f"done: {s.rows_embedded:,} rows {verb}, {s.rows_skipped:,} skipped, {s.rows_failed:,} failed, "
            f"{s.rows_truncated:,} truncated in {duration(elapsed)} ({speed}); "
            f"{short(s.tokens)} tokens ({per_minute(s.tokens / self._elapsed() * 60, 'tokens')}), "
            f"{s.requests:,} requests -> {where}"
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
