"""What a person (tqdm bar) or a log (plain periodic lines) sees while a job runs, and the final report."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from batchembed.human import duration, per_minute, per_second, short
from batchembed.stats import Stats


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
        done = f"{s.rows_embedded:,} rows {verb}"
        if s.rows_reused or s.rows_recovered:  # rows written, not all of them bought now
            found = f"{s.rows_reused:,} reused from the output" + (
                f", {s.rows_recovered:,} recovered from the journal" if s.rows_recovered else ""
            )
            done = f"{s.rows_embedded:,} rows written ({s.rows_bought:,} {verb} now, {found})"
        return (
            f"done: {done}, {s.rows_skipped:,} skipped, {s.rows_failed:,} failed, "
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
