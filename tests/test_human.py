"""Numbers people read: the progress line and the summary speak in human units, and a local model shows
its rows/s and threads instead of rate limits that mean nothing for it."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.human import duration, per_minute, per_second, short
from batchembed.run.progress import Progress
from batchembed.sending.limits import RateLimits
from batchembed.stats import Stats
from tests.conftest import job_for, make_texts, run_here, write_job, write_parquet


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (7, "7"),
        (2.5, "2.5"),
        (600, "600"),
        (1_500, "1.5k"),
        (600_000, "600k"),
        (999_999, "1.0M"),
        (1_000_000, "1.0M"),
        (12_345_678, "12M"),
        (1_000_000_000, "1.0B"),
    ],
)
def test_short_counts(value, text):
    assert short(value) == text


def test_rates_and_durations():
    assert per_minute(1e9, "tokens") == "1.0B tokens/min"
    assert per_minute(600, "requests") == "600 requests/min"
    assert per_second(37.4, "rows") == "37 rows/s"
    assert per_second(1_250, "rows") == "1,250 rows/s"
    assert per_second(0.5, "rows") == "0.5 rows/s"
    assert duration(302) == "5m 02s"


def test_paced_limits_read_as_rates():
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=1_000_000_000, concurrency=4)
    assert limits.describe() == "1.0B tokens/min (configured), 600 requests/min (configured)"


def _line(stats: Stats) -> str:
    progress = Progress(stats, quiet=True, stream=io.StringIO())
    progress.start()
    return progress.status_line()


def test_progress_line_for_a_remote_provider_names_its_pace():
    stats = Stats(rows_total=3_000, tokens=1_500_000, pace="600k tokens/min (server), 600 requests/min (configured)")
    line = _line(stats)
    assert "rows 0/3,000" in line and "ETA after the first answers" in line
    assert "1.5M tokens" in line
    assert line.endswith("; pacing to 600k tokens/min (server), 600 requests/min (configured)")
    stats.rows_embedded = 1_000
    assert "ETA " in _line(stats) and "ETA after" not in _line(stats)


def test_progress_line_for_the_local_model_shows_threads_not_limits():
    stats = Stats(rows_total=100, threads=2, pace="1.0B tokens/min (configured), 1.0M requests/min (configured)")
    line = _line(stats)
    assert line.endswith("; local model on 2 threads") and "/min (configured)" not in line


def test_local_run_summary_shows_rows_per_second_and_threads(tmp_path):
    texts = [f"sentence number {i} about rivers and stones" for i in range(40)]
    pq.write_table(pa.table({"id": list(range(40)), "text": texts}), tmp_path / "in.parquet")
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(tmp_path / "in.parquet"), "id": "id"},
            "model": {"provider": "local", "threads": 1},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if "done:" in line)
    assert "40 rows embedded" in summary and " rows/s, local model on 1 thread)" in summary
    assert "requests/min" not in summary and "1e+03M" not in result.stderr


def test_remote_run_summary_uses_human_rates(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(50))
    job = job_for(tmp_path, fake, src)
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if "done:" in line)
    assert "50 rows embedded" in summary and " rows/s, " in summary and " requests/min, 4 in flight (fixed))" in summary
    assert " tokens/min)" in summary


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("threads", "shown", "hidden"),
    [(2, "; local model on 2 threads", "pacing to"), (None, "; pacing to 600k tokens/min (server)", "thread")],
)
def test_progress_bar_shows_threads_for_the_local_model_and_the_pace_otherwise(threads, shown, hidden):
    stats = Stats(rows_total=1_000, tokens=90_000, threads=threads, pace="600k tokens/min (server)")
    screen = _Terminal()
    progress = Progress(stats, stream=screen, width=200)
    progress.start()
    stats.rows_embedded = 500
    progress.refresh()
    progress.close()
    out = screen.getvalue()
    assert "500/1000" in out and "tokens/min" in out and shown in out and hidden not in out


def test_rows_move_as_requests_end_not_only_when_a_piece_is_written():
    stats = Stats(rows_total=1_000, rows_answered=250.0)
    line = _line(stats)
    assert "rows 250/1,000" in line and "ETA after" not in line
    stats.rows_embedded = 300  # a written piece never counts less than its answers
    assert "rows 300/1,000" in _line(stats)


def test_a_run_credits_every_row_once_as_its_requests_end(tmp_path, fake):
    from batchembed.job.config import load_job
    from batchembed.run.assemble import build_runner

    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    # one piece of 300 rows, sent as many small requests
    job = load_job(job_for(tmp_path, fake, src, limits={"batch_inputs": 7}, output={"shard_rows": 1000}))
    runner = build_runner(job, quiet=True, transport=fake.transport())
    assert runner.run() == 0
    assert runner.stats.rows_answered == pytest.approx(300) and runner.stats.rows_progress == 300
    assert len(fake.requests) > 40
