"""What a person (tqdm bar) or a log (plain periodic lines) sees while a job runs, and the final report.

A bar is drawn only on a terminal whose width is known; anywhere else (a log, a pipe, CI, ``script``, a
terminal that reports no width) plain status lines are printed every ``interval`` seconds by a
heartbeat thread, from the moment the run is set up until it ends, whatever the run is doing (its
setup, waiting for batches, writing), so a run is never silent for minutes. The row total comes from
the inputs' row counts (Parquet footers) or, for CSV and JSON Lines, from a count made in the
background (``RowCount``); until it is known the ETA says so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from batchembed.human import duration, per_minute, per_second, plural, short
from batchembed.run.rowcount import RowCount
from batchembed.stats import Stats

#: Seconds between plain status lines (logs, pipes, terminals without a width).
LINE_INTERVAL = 10.0


def reported_width(stream: TextIO) -> int:
    """The width the terminal behind ``stream`` reports (0: not a terminal, or one that reports none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


def terminal_width(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to: 0 when it is not one or reports none (``script``,
    some CI runners), unless ``COLUMNS`` says."""
    try:
        if not stream.isatty():
            return 0
    except (AttributeError, ValueError):
        return 0
    columns = reported_width(stream)
    if columns <= 0:
        try:
            columns = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            columns = 0
    return max(columns, 0)


class Progress:
    """A tqdm bar on a terminal with a known width; plain lines every ``interval`` seconds otherwise or with
    ``quiet``. ``width``: the terminal's, detected from ``stream`` when not given."""

    def __init__(
        self,
        stats: Stats,
        quiet: bool = False,
        interval: float = LINE_INTERVAL,
        stream: TextIO | None = None,
        width: int | None = None,
    ):
        self.stats = stats
        self.stream = stream or sys.stderr
        self.width = terminal_width(self.stream) if width is None else width
        self.bar_mode = not quiet and self.width > 0
        self.interval = interval
        self._since = stats.started  # until start(): rates count from the run's start
        self._started = False
        self._bar: tqdm | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.counting: RowCount | None = None

    # ------------------------------------------------------------------------------ the run's phases

    def begin(self) -> None:
        """The run is being set up: from now on a log hears from it every ``interval`` seconds."""
        if self._heartbeat is None and not self.bar_mode:
            self._heartbeat = threading.Thread(target=self._beat, name="batchembed-progress", daemon=True)
            self._heartbeat.start()

    def start(self) -> None:
        """Sending begins: open the bar (terminal mode); rates and the ETA count from here (setup is not
        sending)."""
        self._since = time.monotonic()
        self._started = True
        if self.bar_mode:
            total = self.stats.rows_total
            # smoothing=0: the ETA divides what is left by the average rate since the start, not by the
            # rate of the last few updates (rows are counted as requests end, in steps)
            self._bar = tqdm(
                total=total,
                unit=" rows",
                unit_scale=not total or total >= 100_000,  # 1.2M/3.0M; 120/3000
                smoothing=0,
                file=self.stream,
                # follows the terminal's size as it changes where it reports one; else COLUMNS's width and a
                # height (a terminal reporting 0 x 0, as under `script`, makes tqdm draw nothing at all)
                dynamic_ncols=reported_width(self.stream) > 0,
                ncols=None if reported_width(self.stream) > 0 else self.width,
                nrows=None if reported_width(self.stream) > 0 else 24,
                bar_format=self._format(total),
            )
        else:
            self.begin()

    def count_rows(self, count: RowCount) -> None:
        """Learn the row total from ``count`` (CSV and JSON Lines counted in the background) as it ends."""
        self.counting = count
        count.start(self._total_known)

    def _total_known(self, total: int) -> None:
        if self.stats.rows_total is None:
            self.stats.rows_total = total

    def _format(self, total: int | None) -> str:
        if total is None:
            return "{n_fmt} rows [{elapsed}]{postfix}"
        return "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} rows [{elapsed}]{postfix}"

    def _elapsed(self) -> float:
        return max(time.monotonic() - self._since, 1e-9)

    # --------------------------------------------------------------------------------- the figures

    def eta(self) -> str:
        """Time left at the average rate so far ("ETA 4m 10s"), or why it is not known yet; the batch tier's
        answers come within the provider's window, not at a rate."""
        s = self.stats
        if s.batch_window is not None:
            return f"answers within the provider's {s.batch_window} window"
        if s.rows_total is None:
            return "ETA once the rows are counted"
        done = s.rows_progress
        if done == 0:
            return "ETA after the first answers"
        left = max(s.rows_total - done, 0)
        return f"ETA {duration(left / (done / self._elapsed()))}"

    def bound_by(self) -> str:
        """What sets the speed: the local model's threads, or the rate limits paced to (the batch tier: its
        batches)."""
        s = self.stats
        if s.threads is not None:
            return f"local model on {plural(s.threads, 'thread')}"
        if s.batch_window is not None:
            return s.pace
        return f"pacing to {s.pace}" if s.pace else ""

    def refresh(self) -> None:
        """Called periodically by the runner: redraw the bar (plain lines come from the heartbeat)."""
        with self._lock:
            bar = self._bar
            if bar is None:
                return
            s = self.stats
            if bar.total != s.rows_total:
                bar.total = s.rows_total
                bar.bar_format = self._format(s.rows_total)
            bar.n = s.rows_progress
            bound = self.bound_by()
            bar.set_postfix_str(
                f"{per_second(s.rows_progress / self._elapsed(), 'rows')}, {self.eta()}, "
                f"{per_minute(s.tokens / self._elapsed() * 60, 'tokens')}, {s.in_flight} in flight, "
                f"{plural(sum(s.retries.values()), 'retry')}" + (f"; {bound}" if bound else ""),
                refresh=False,
            )
            bar.refresh()

    def status_line(self) -> str:
        """One line of counters for logs, in human units."""
        s = self.stats
        if not self._started:
            return f"preparing the run ({duration(time.monotonic() - s.started)} so far): finding and checking the " + (
                "inputs, taking the output's lock, asking the server"
            )
        elapsed = self._elapsed()
        total = f"/{s.rows_total:,}" if s.rows_total is not None else ""
        bound = self.bound_by()
        return (
            f"rows {s.rows_progress:,}{total} ({per_second(s.rows_progress / elapsed, 'rows')}, {self.eta()}), "
            f"{short(s.tokens)} tokens ({per_minute(s.tokens / elapsed * 60, 'tokens')}), "
            f"in flight {s.in_flight}, retries {sum(s.retries.values())}, failed {s.rows_failed}, "
            f"truncated {s.rows_truncated}" + (f"; {bound}" if bound else "")
        )

    def _beat(self) -> None:
        """The heartbeat thread: a status line every ``interval`` seconds until ``close``, the first after half of
        it (the process's start and the model's loading came before: a log hears from a run early)."""
        wait = self.interval / 2
        while not self._done.wait(wait):
            self.line(self.status_line())
            wait = self.interval

    def summary(self, verb: str, where: str) -> str:
        """The closing line of a run: what was done, how fast, and what bound the speed."""
        s = self.stats
        elapsed = max(s.elapsed, 1e-9)
        rate = per_second(s.rows_done / self._elapsed(), "rows")
        requests = plural(s.requests, "request")
        if s.threads is not None:
            speed = f"{rate}, local model on {plural(s.threads, 'thread')}"
        elif s.batch_window is not None:  # answered by the provider's batches, not by requests
            speed, requests = f"{rate}, through the batch tier", plural(s.requests, "online request")
        else:
            speed = f"{rate}, {per_minute(s.requests / self._elapsed() * 60, 'requests')}"
            speed += f", {s.concurrency}" if s.concurrency else ""
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
            f"{requests} -> {where}"
        )

    def line(self, text: str) -> None:
        """Print a message without breaking the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(f"batchembed: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar, stop the heartbeat and the row count."""
        self._done.set()
        if self.counting is not None:
            self.counting.stop()
        if self._bar is not None:
            self.refresh()
            with self._lock:
                self._bar.close()
                self._bar = None
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)


class Heartbeat:
    """``with Heartbeat(text):`` prints ``batchembed: {text()}`` every ``interval`` seconds while the block runs
    (``plan`` reading a big input), so no command is silent for minutes; nothing for a short block."""

    def __init__(self, text: Callable[[], str], interval: float = LINE_INTERVAL, stream: TextIO | None = None):
        self.text = text
        self.interval = interval
        self.stream = stream or sys.stderr
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="batchembed-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(self.interval):
            print(f"batchembed: {self.text()}", file=self.stream, flush=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
