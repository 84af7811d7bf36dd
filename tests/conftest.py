"""Shared helpers: job files, running the CLI (in this process against the in-process fake provider, or
as a real subprocess where the process itself matters), reading output back."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

from batchembed import cli
from batchembed.testing import FakeProvider, FakeServer, expected_vector

# Property tests check behaviour, not speed: no per-example deadline (the suite runs more xdist workers
# than cores, so one example can wait for a core far longer than hypothesis' default 200 ms).
settings.register_profile("batchembed", deadline=None)
settings.load_profile("batchembed")

ROOT = Path(__file__).resolve().parents[1]

# tests/servers/ run against the real third-party servers that `make test-servers` starts (tests.servers.launch
# names them in BATCHEMBED_SERVERS); `make test` does not collect them at all, so it stays offline and skips nothing.
collect_ignore = [] if os.environ.get("BATCHEMBED_SERVERS") else ["servers"]


def toml_value(value) -> str:
    """A Python value as a TOML literal."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def write_job(path: Path, sections: dict[str, dict]) -> Path:
    """Write a job file from {"input": {...}, "model": {...}, ...}."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def job_for(tmp_path: Path, srv: FakeServer, input_path: Path, **sections) -> Path:
    """A job against the fake server with small, fast defaults; ``sections`` override per section."""
    base = {
        "input": {"path": str(input_path), "text": "text", "id": "id"},
        "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake", "timeout": 5.0},
        "limits": {"batch_inputs": 32, "concurrency": 4, "max_retries": 4},
        "output": {"path": str(tmp_path / "out"), "shard_rows": 200},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return write_job(tmp_path / "job.toml", base)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for the child: this repo importable, nothing secret inherited."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``batchembed ARGS`` to completion; returns the CompletedProcess (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "batchembed.cli", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        cwd=ROOT,
    )


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Within the block, ``os.environ`` is ``env`` (default: ``cli_env()``, no API keys); restored after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env if env is not None else cli_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_here(fake: FakeProvider | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``batchembed ARGS`` run by ``cli.main`` in this process, every request answered in-process by
    ``fake`` (no socket; None for commands that send nothing: ``status``, ``verify``, ``plan``): the exit
    code, stdout and stderr as ``run_cli`` would give them, in a fraction of a subprocess's start-up
    time. Use ``run_cli`` where the process matters (kill, signals, failpoints)."""
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args), transport=fake.transport() if fake is not None else None)
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["batchembed", *args], code, out.getvalue(), err.getvalue())


def message_lines(stderr: str) -> list[str]:
    """stderr's lines without the periodic status lines a run prints every 10 s to a log (a loaded machine
    makes a short run slow enough to print one)."""
    return [line for line in stderr.strip().splitlines() if not STATUS_LINE.match(line)]


#: A periodic status line (``run.progress``), as opposed to a message.
STATUS_LINE = re.compile(r"batchembed: (rows [\d,]+|preparing the run)")


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``batchembed ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchembed.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=ROOT,
    )


def answer_until(srv: FakeProvider, condition, cap: int | None = None) -> int:
    """With ``srv`` holding every request, answer them one at a time (oldest first) until ``condition``
    holds, never more than ``cap`` (a run that needs more answers cannot finish meanwhile); the number
    answered. The run moves only as far as the test lets it, however fast or slow the machine is;
    pytest-timeout ends a test whose event never comes."""
    answered = 0
    while not condition():
        if cap is not None and answered >= cap:  # enough answers: wait for what they lead to
            while not condition():
                time.sleep(0.05)
            break
        srv.wait_for_held(1, timeout=None)
        srv.release(1)
        answered += 1
    return answered


def hold_mid_run(srv: FakeServer, job: Path, requests: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``batchembed run JOB --quiet`` with every answer held, answer requests one at a time until the
    server has seen ``requests`` of them, and return the running process (at least one request held:
    in flight until ``srv.release()``)."""
    srv.hold()
    proc = start_cli("run", str(job), "--quiet", env=env)
    answer_until(srv, lambda: len(srv.requests) >= requests)
    return proc


def kill_held(proc: subprocess.Popen, srv: FakeServer) -> None:
    """SIGKILL ``proc`` while the server holds its requests in flight, then let the server answer again.

    The kill waits until at least one request is parked by the hold, so the killed run always had a
    request unanswered (without it, every request in flight at ``hold()`` could be answered first)."""
    srv.wait_for_held(1, timeout=None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    srv.release()
    assert proc.returncode == -signal.SIGKILL


def kill_mid_run(srv: FakeServer, job: Path, requests: int, env: dict[str, str] | None = None) -> None:
    """Run the job and SIGKILL it once the server has seen ``requests`` requests, with requests in flight."""
    kill_held(hold_mid_run(srv, job, requests, env), srv)


def table_shards(out: Path) -> list[Path]:
    """The shard files of an output a reader sees: the files of the Delta table's current version when it
    has one (files a refresh replaced stay a while beside them, for readers of the previous version), else
    every ``part-*.parquet`` (a first run not yet published), in shard order."""
    if (out / "_delta_log").is_dir() and any((out / "_delta_log").glob("*.json")):
        from deltalake import DeltaTable

        return sorted(Path(uri) for uri in DeltaTable(str(out)).file_uris())
    return sorted(out.glob("part-*.parquet"))


def read_output(out: Path) -> pa.Table:
    """All shards of an output directory as a reader of its table sees them (``table_shards``), in shard order."""
    shards = table_shards(out)
    return pa.concat_tables(pq.read_table(p) for p in shards) if shards else pa.table({})


def assert_vectors(table: pa.Table, text_of: dict, dim: int, id_column: str = "id", column: str = "embedding"):
    """Every row's vector is exactly the fake server's vector for its text (null for blank text)."""
    ids = table.column(id_column).to_pylist()
    vectors = table.column(column)
    combined = vectors.combine_chunks()
    # .values keeps the slots of null rows (flatten() would drop them and shift every later row)
    flat = combined.values.to_numpy(zero_copy_only=False).reshape(-1, dim)[combined.offset :]
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    for i, row_id in enumerate(ids):
        text = text_of[row_id]
        if text is None or not str(text).strip():
            assert not valid[i], f"row {row_id}: blank text should have a null vector"
            continue
        assert valid[i], f"row {row_id}: missing vector"
        np.testing.assert_allclose(flat[i], expected_vector(text, dim), atol=1e-6, err_msg=str(row_id))


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct realistic-ish texts of varied length."""
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river stone cloud quiet rapid green orange market data vector".split()
    return [f"doc {i}: " + " ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for i in range(n)]


def write_parquet(path: Path, texts: list, row_group_size: int = 128, **extra_columns) -> Path:
    """Input Parquet with ``id`` (0..n-1) and ``text``."""
    table = pa.table(
        {"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string()), **extra_columns}
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def srv():
    """A fresh fake provider on 127.0.0.1 with 16-dimensional vectors."""
    with FakeServer(dim=16) as server:
        yield server


@pytest.fixture
def fake():
    """A fresh fake provider in-process with 16-dimensional vectors (pass it to ``run_here``)."""
    return FakeProvider(dim=16)


def most_in_window(times: list[float], seconds: float) -> int:
    """The most events (``received_at`` times) that fall in any window of ``seconds``."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def paced_allowance(per_minute: int, seconds: float) -> float:
    """What a pacer keeping ``per_minute`` (one second of budget as burst) may send in ``seconds``, plus
    two for clock jitter between the sender and the server."""
    return per_minute / 60 * (1 + seconds) + 2


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 for one test module (``tests.s3server``)."""
    pytest.importorskip("obstore")
    from tests.s3server import MotoServer

    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


def daily_files(tmp_path: Path, files: int, rows: int) -> tuple[Path, dict[int, str]]:
    """``files`` Parquet inputs ``in/f{i}.parquet`` of ``rows`` rows each (ids unique across them):
    (the folder, {id: text})."""
    src = tmp_path / "in"
    src.mkdir()
    text_of = {}
    for f in range(files):
        texts = make_texts(rows, seed=f)
        ids = [f * rows + i for i in range(rows)]
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), src / f"f{f}.parquet")
        text_of.update(zip(ids, texts, strict=True))
    return src, text_of


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL 16 + pgvector on a Unix socket in a temp dir, for one test module (``tests.pgserver``)."""
    pytest.importorskip("pgserver")
    from tests.pgserver import Postgres

    server = Postgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def azurite():
    """An Azurite (Azure Storage emulator) server for one test module; skipped where npm could not install it."""
    from tests.azurite import BINARY, Azurite

    if not BINARY.exists():
        pytest.skip("Azurite is not installed (make setup installs it with npm when npm is available)")
    server = Azurite().start()
    try:
        yield server
    finally:
        server.stop()
