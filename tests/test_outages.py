"""Outages and stop signals, through a real ``batchembed`` process and a real server on loopback: a wrong
address named at once and given up on (exit 68); a server that goes away mid-run ridden out with a line
on stderr and a line when it is back; SIGTERM honoured within its grace in every state a run waits in
(an answer that takes 90 s, a back-off, connecting, an outage, a batch-tier poll), and the next run exact.

Every step is synchronised on an event (a line the process printed, a request the server holds, a
counter on the server), never on a sleep. The only clock in these tests is the promise itself: a
stopped process exits within ``limits.stop_grace_seconds`` + 5 s (the grace is kept small here).
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.exitcodes import ExitCode
from batchembed.testing import FakeServer
from batchembed.testing.batchapi import FakeBatchServer
from batchembed.testing.rules import Respond
from tests.conftest import (
    answer_until,
    assert_vectors,
    cli_env,
    job_for,
    make_texts,
    read_output,
    run_cli,
    start_cli,
    write_job,
    write_parquet,
)
from tests.test_batch_tier import batch_job

#: The grace the tests give requests in flight after a signal (``limits.stop_grace_seconds``).
GRACE = 2.0
#: What the README promises on top of the grace: a stopped process has exited by then.
DEADLINE = GRACE + 5.0
ROWS = 1200


class Watched:
    """A running ``batchembed run`` whose stderr is read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str) -> str:
        """Block until a stderr line containing ``text`` is printed; that line (pytest-timeout ends a wait
        for a line that never comes; a process that exits first fails the test)."""
        while True:
            line = self._queue.get()
            if line is None:
                raise AssertionError(f"the process exited without saying {text!r}:\n{''.join(self.lines)}")
            self.lines.append(line)
            if text in line:
                return line

    def stop_with(self, sig: int) -> tuple[int, float, str]:
        """Send ``sig``; the exit code, the seconds until the process exited, and everything it said."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait()
        took = time.monotonic() - sent
        return self.proc.returncode, took, self.finish()

    def finish(self) -> str:
        """Wait for the process to end; all of its stderr."""
        self.proc.wait()
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outage_job(tmp_path: Path, srv: FakeServer, texts: list[str], **limits) -> Path:
    src = write_parquet(tmp_path / "in.parquet", texts)
    settings = {"stop_grace_seconds": GRACE, "connect_timeout": 30, "outage_seconds": 300, **limits}
    return job_for(tmp_path, srv, src, limits=settings, model={"timeout": 120.0})


def start(job: Path, *extra: str) -> Watched:
    return Watched(start_cli("run", str(job), "--quiet", *extra, env=cli_env()))


def start_in_flight(srv: FakeServer, job: Path) -> Watched:
    """Start the run against a holding server and answer it until it has sent 12 requests: it is mid-run,
    with requests held on the wire."""
    srv.hold()
    run = start(job)
    answer_until(srv, lambda: len(srv.requests) >= 12)
    return run


def assert_exact(tmp_path: Path, texts: list[str], dim: int = 64) -> None:
    table = read_output(tmp_path / "out")
    assert table.num_rows == len(texts)
    assert_vectors(table, dict(enumerate(texts)), dim)


def finish_exact(tmp_path: Path, job: Path, texts: list[str], dim: int = 64) -> None:
    """The next run finishes the job, and the output holds every row once with its vector."""
    done = run_cli("run", str(job), "--quiet")
    assert done.returncode == 0, done.stderr
    assert_exact(tmp_path, texts, dim)


# ------------------------------------------------------------------------------ before any answer


def test_a_closed_port_is_named_at_once_retried_with_a_line_each_time_then_exit_68(tmp_path):
    port = closed_port()
    texts = make_texts(50)
    fake_url = FakeServer()
    fake_url.port = port  # the job names the port; nothing listens there
    job = outage_job(tmp_path, fake_url, texts, connect_timeout=5)
    run = start(job)
    first = run.wait_for("cannot reach the server")
    assert f"127.0.0.1:{port}" in first and "connection refused" in first
    assert "start the server, or correct the host or port in model.base_url" in first
    assert "limits.connect_timeout = 5s" in first
    err = run.finish()
    assert run.proc.returncode == ExitCode.SERVER_UNREACHABLE == 68, err
    assert "still cannot reach" in err  # a line per retry
    assert f"could not reach the server at 127.0.0.1:{port}" in err and "run the same command again" in err

    # nothing written binds the output: the job pointed at a server that answers, with another vector size,
    # simply runs (no --restart)
    with FakeServer(dim=32) as srv:
        job = outage_job(tmp_path, srv, texts)
        finish_exact(tmp_path, job, texts, dim=32)


def test_a_rerank_job_whose_first_request_finds_a_closed_port_names_it_and_exits_68(tmp_path):
    port = closed_port()
    src = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"qid": ["q1", "q1"], "query": ["q?", "q?"], "did": ["a", "b"], "document": ["x", "y"]}), src
    )
    job = write_job(
        tmp_path / "rerank.toml",
        {
            "input": {"path": str(src)},
            "model": {"provider": "openai-compatible", "base_url": f"http://127.0.0.1:{port}/v1", "name": "r"},
            "limits": {"connect_timeout": 5},
            "output": {"path": str(tmp_path / "out")},
            "rerank": {"layout": "pairs", "query": "query", "query_id": "qid", "document": "document", "doc_id": "did"},
        },
    )
    r = run_cli("run", str(job), "--quiet")
    assert r.returncode == ExitCode.SERVER_UNREACHABLE, r.stderr
    assert f"cannot reach the server at 127.0.0.1:{port}" in r.stderr and "still cannot reach" in r.stderr


def test_sigterm_while_connecting_to_a_closed_port_exits_143_within_the_grace(tmp_path):
    port = closed_port()
    fake_url = FakeServer()
    fake_url.port = port
    job = outage_job(tmp_path, fake_url, make_texts(50), connect_timeout=600)
    run = start(job)
    run.wait_for("cannot reach the server")
    code, took, err = run.stop_with(signal.SIGTERM)
    assert code == ExitCode.SIGTERM, err
    assert took < DEADLINE, f"exit {took:.1f}s after SIGTERM"
    assert "run the same command again to resume" in err.lower()


def test_a_wrong_key_is_named_with_the_server_and_the_fix(tmp_path):
    with FakeServer(dim=64, api_key="right") as srv:
        src = write_parquet(tmp_path / "in.parquet", make_texts(20))
        job = job_for(tmp_path, srv, src, model={"api_key_env": "TEST_EMBED_KEY"})
        r = run_cli("run", str(job), "--quiet", env=cli_env(TEST_EMBED_KEY="wrong-secret-value"))
    assert r.returncode == ExitCode.FAILED, r.stderr
    assert f"127.0.0.1:{srv.port}" in r.stderr and "TEST_EMBED_KEY" in r.stderr and "Likely fix" in r.stderr
    assert "wrong-secret-value" not in r.stderr


@pytest.mark.parametrize(
    ("scheme", "path", "code", "fix"),
    [
        ("https", "/v1", ExitCode.SERVER_UNREACHABLE, "if the server speaks plain HTTP, write http://"),
        ("http", "/nope", ExitCode.FAILED, "OpenAI-compatible servers usually end in /v1"),
    ],
)
def test_tls_to_a_plain_server_and_a_wrong_path_are_named_at_the_first_try(tmp_path, scheme, path, code, fix):
    with FakeServer(dim=64) as srv:
        src = write_parquet(tmp_path / "in.parquet", make_texts(20))
        job = job_for(tmp_path, srv, src, model={"base_url": f"{scheme}://127.0.0.1:{srv.port}{path}"})
        r = run_cli("run", str(job), "--quiet")
        assert srv.requests == []  # nothing of the job was sent
    assert r.returncode == code, r.stderr
    assert f"127.0.0.1:{srv.port}" in r.stderr and fix in r.stderr
    assert "still cannot reach" not in r.stderr  # not retried: it fails the same way every time


# ------------------------------------------------------------------------------ stops while waiting


def test_sigterm_while_answers_take_90_seconds_exits_143_within_the_grace_and_the_next_run_is_exact(tmp_path):
    texts = make_texts(ROWS)
    with FakeServer(dim=64) as srv:
        job = outage_job(tmp_path, srv, texts)
        run = start_in_flight(srv, job)
        srv.wait_for_held(1, timeout=None)  # a request on the wire
        srv.latency = 90.0  # from now on the server takes 90 s over every answer, the held ones too
        srv.release()
        code, took, err = run.stop_with(signal.SIGTERM)
        assert code == ExitCode.SIGTERM, err
        assert took < DEADLINE, f"exit {took:.1f}s after SIGTERM with answers 90 s away"
        assert "up to 2s" in err and "run the same command again to resume" in err.lower()
        srv.latency = 0.0
        finish_exact(tmp_path, job, texts)


def test_sigterm_in_a_retry_back_off_exits_143_at_once(tmp_path):
    texts = make_texts(ROWS)
    with FakeServer(dim=64) as srv:
        job = outage_job(tmp_path, srv, texts)
        srv.script(Respond(500, headers={"Retry-After": "600"}))  # its retry waits 10 minutes
        run = start(job)
        while srv.pending_rules:  # a request got the 500: its sender sleeps in the back-off
            srv.wait_for_requests(len(srv.requests) + 1, timeout=None)
        code, took, err = run.stop_with(signal.SIGTERM)
        assert code == ExitCode.SIGTERM, err
        assert took < DEADLINE, f"exit {took:.1f}s after SIGTERM in a 600 s back-off"
        finish_exact(tmp_path, job, texts)


# ------------------------------------------------------------------------------ outages mid-run


def test_a_server_restarted_mid_run_is_waited_for_in_the_open_and_nothing_is_bought_twice(tmp_path):
    texts = make_texts(ROWS)
    with FakeServer(dim=64) as srv:
        job = outage_job(tmp_path, srv, texts)
        run = start_in_flight(srv, job)
        srv.stop()  # the answers held are given, then the server is gone
        line = run.wait_for("stopped answering")
        assert f"127.0.0.1:{srv.port}" in line and "waiting for it until" in line
        srv.start()  # the same port
        back = run.wait_for("answers again")
        assert f"127.0.0.1:{srv.port}" in back
        err = run.finish()
        assert run.proc.returncode == 0, err
        bought = sum(len(r.inputs) for r in srv.requests)
    assert bought <= 1.05 * len(texts)
    assert_exact(tmp_path, texts)
    (outage,) = json.loads((tmp_path / "out" / "_report.json").read_text())["outages"]
    assert outage["server"] == f"127.0.0.1:{srv.port}" and outage["back"] is True


def test_an_outage_longer_than_its_window_stops_like_sigterm_with_exit_68_and_resumes(tmp_path):
    texts = make_texts(ROWS)
    with FakeServer(dim=64) as srv:
        job = outage_job(tmp_path, srv, texts, outage_seconds=1)
        run = start_in_flight(srv, job)
        srv.stop()
        run.wait_for("stopped answering")
        err = run.finish()
        assert run.proc.returncode == ExitCode.SERVER_UNREACHABLE, err
        assert "limits.outage_seconds = 1s" in err and "run the same command again to resume" in err.lower()
        (outage,) = json.loads((tmp_path / "out" / "_report.json").read_text())["outages"]
        assert outage["back"] is False and outage["seconds"] >= 1
        srv.start()
        finish_exact(tmp_path, job, texts)


def test_sigterm_during_an_outage_exits_143_within_the_grace(tmp_path):
    texts = make_texts(ROWS)
    with FakeServer(dim=64) as srv:
        job = outage_job(tmp_path, srv, texts)
        run = start_in_flight(srv, job)
        srv.stop()
        run.wait_for("stopped answering")
        code, took, err = run.stop_with(signal.SIGTERM)
        assert code == ExitCode.SIGTERM, err
        assert took < DEADLINE, f"exit {took:.1f}s after SIGTERM during an outage"
        srv.start()
        finish_exact(tmp_path, job, texts)


# ------------------------------------------------------------------------------ the batch tier


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_a_batch_poll_goes_unanswered_exits_within_the_grace(tmp_path, sig, code):
    texts = make_texts(200)
    with FakeBatchServer(dim=16) as srv:
        srv.hold_batches = True
        job = batch_job(tmp_path, srv, texts, batch_poll_seconds=0.05, timeout=120.0)
        job.write_text(job.read_text().replace("[limits]\n", f"[limits]\nstop_grace_seconds = {GRACE}\n"))
        proc = start_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk"))
        run = Watched(proc)
        srv.wait_for_batches(2, timeout=None)
        srv.hold()  # the next poll is never answered
        srv.wait_for_held(1, timeout=None)
        got, took, err = run.stop_with(sig)
        assert got == code, err
        assert took < DEADLINE, f"exit {took:.1f}s after the signal with a poll unanswered"
        assert "keep running at the provider" in err
        srv.release()
        srv.hold_batches = False
        done = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk"))
        assert done.returncode == 0, done.stderr
        assert len(srv.created) == 2 and sorted(srv.billed_texts) == sorted(texts)


def test_the_batch_tier_names_a_closed_port_and_gives_up_with_exit_68(tmp_path):
    port = closed_port()
    fake_url = FakeServer()
    fake_url.port = port
    job = batch_job(tmp_path, fake_url, make_texts(50))
    job.write_text(job.read_text().replace("[limits]\n", "[limits]\nconnect_timeout = 5\n"))
    r = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk-secret-value"))
    assert r.returncode == ExitCode.SERVER_UNREACHABLE, r.stderr
    assert f"cannot reach the server at 127.0.0.1:{port}" in r.stderr and "still cannot reach" in r.stderr
    assert "sk-secret-value" not in r.stderr


# ------------------------------------------------------------------------------ a sink's database


def test_sigterm_while_a_sink_waits_on_its_database_exits_143_within_the_grace_and_the_next_run_syncs(
    tmp_path, postgres
):
    psycopg = pytest.importorskip("psycopg")
    from tests.sinkcheck import add_sinks, assert_same, postgres_rows, table_rows

    dsn = postgres.database("outage_sink")
    env = cli_env(BATCHEMBED_PG_DSN=dsn)
    texts = make_texts(300)
    with FakeServer(dim=64) as srv:
        job = add_sinks(outage_job(tmp_path, srv, texts), {"kind": "postgres", "table": "search.doc_vectors"})
        with psycopg.connect(dsn, autocommit=True) as holder:  # another sync holds the table's lock
            holder.execute("SELECT pg_advisory_lock(hashtext(%s))", ["batchembed sink search.doc_vectors"])
            run = Watched(start_cli("run", str(job), "--quiet", env=env))
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            while not holder.execute(waiting).fetchone()[0]:  # the run's sync waits for the lock
                time.sleep(0.05)
            code, took, err = run.stop_with(signal.SIGTERM)
            assert code == ExitCode.SIGTERM, err
            assert took < DEADLINE, f"exit {took:.1f}s after SIGTERM while a sink waited on its database"
        done = run_cli("run", str(job), "--quiet", env=env)
        assert done.returncode == 0, done.stderr
    assert_exact(tmp_path, texts)
    columns = ["id", "embedding"]
    assert_same(postgres_rows(dsn, "search.doc_vectors", columns), table_rows(tmp_path / "out", columns))
