"""``run --engine ray`` on a real local Ray (one per module, 127.0.0.1, 4 CPUs): faults and the shared limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    ROOT,
    answer_until,
    assert_vectors,
    cli_env,
    daily_files,
    job_for,
    make_texts,
    most_in_window,
    paced_allowance,
    read_output,
    run_cli,
    start_cli,
    write_job,
)

pytest.importorskip("ray")

_HEAD = (
    "import sys, ray\n"
    "ray.init(address='local', num_cpus=4, include_dashboard=False, _node_ip_address='127.0.0.1',\n"
    "         logging_level='ERROR')\n"
    "print(ray.get_runtime_context().gcs_address, flush=True)\n"
    "sys.stdin.read()\n"
    "ray.shutdown()\n"
)


def _env(**extra: str) -> dict[str, str]:
    # the test cluster lives for one module on this machine: no token to hand around
    return cli_env(RAY_AUTH_MODE="disabled", **extra)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray for this module's tests; it ends when its stdin closes."""
    head = subprocess.Popen(
        [sys.executable, "-c", _HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    address = head.stdout.readline().strip()
    assert address, "the test Ray did not start"
    _HEAD_PID[0] = head.pid
    yield address
    head.stdin.close()
    head.wait(timeout=120)


def _inputs(tmp_path: Path, files: int, rows: int):
    return daily_files(tmp_path, files, rows)


def _wait_for(condition, what: str) -> None:
    """Poll until ``condition`` holds: an event of the run (a commit, a process), however long it takes on
    a loaded machine (pytest-timeout ends a hung test)."""
    while not condition():
        time.sleep(0.05)


def _commits(out: Path) -> int:
    journal = out / "_commits.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


#: The pid of this module's Ray head: its workers are the only processes these tests look at or kill (the
#: machine may run other test suites' Ray clusters at the same time).
_HEAD_PID = [0]


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent pid, after the (command name)
    return False


def _slice_workers() -> list[int]:
    """Pids of this module's Ray worker processes running a slice of a job right now (Ray titles them
    ``ray::run_slice``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::run_slice"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in pids if _descends_from(pid, _HEAD_PID[0])]


@pytest.mark.timeout(900)
def test_worker_then_driver_killed_then_rerun_gives_every_row_once(tmp_path, srv, ray_address):
    src, text_of = _inputs(tmp_path, files=3, rows=400)
    shard_rows, batch = 80, 10
    job = job_for(
        tmp_path, srv, src, limits={"batch_inputs": batch, "concurrency": 2}, output={"shard_rows": shard_rows}
    )
    out = tmp_path / "out"
    env = _env(RAY_ADDRESS=ray_address)
    # the test hands out every answer: the run gets only as far as the test lets it, at any speed
    srv.hold()
    cap = len(text_of) // batch - 1  # fewer answers than the job's requests: it cannot finish while held

    driver = start_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "3", env=env)
    answered = answer_until(srv, lambda: _commits(out) >= 3, cap)
    _wait_for(lambda: len(_slice_workers()) == 3, "three busy workers")
    busy = set(_slice_workers())
    os.kill(min(busy), signal.SIGKILL)
    at_kill = _commits(out)
    # three more shards committed, and the dead worker's slice running again in another process
    answer_until(srv, lambda: _commits(out) >= at_kill + 3 and set(_slice_workers()) - busy, cap - answered)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate()
    assert "a Ray worker died" in err
    assert not (out / "_SUCCESS").exists()
    srv.release()
    _wait_for(lambda: not _slice_workers(), "Ray to end the dead driver's tasks")

    rerun = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "3", env=env)

    assert rerun.returncode == 0, rerun.stderr
    assert (out / "_SUCCESS").exists()
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    manifest = json.loads((out / "_manifest.json").read_text())
    recorded = {s["name"] for s in manifest["shards"]}
    assert {p.name for p in out.iterdir() if p.name.startswith("part-")} == recorded  # no partial shard left
    assert run_cli("verify", str(job)).returncode == 0
    # each kill cost at most the units in progress: one for the worker, three for the driver's workers
    assert len(srv.received_texts()) <= len(text_of) + 4 * shard_rows


def test_sigterm_to_a_driver_with_requests_in_flight_exits_143_within_the_grace_and_the_rerun_is_exact(
    tmp_path, srv, ray_address
):
    grace = 2
    src, text_of = _inputs(tmp_path, files=1, rows=600)
    job = job_for(
        tmp_path, srv, src, limits={"batch_inputs": 10, "stop_grace_seconds": grace}, output={"shard_rows": 100}
    )
    env = _env(RAY_ADDRESS=ray_address)
    driver = start_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env)
    srv.wait_for_requests(15, timeout=None)
    srv.hold()
    srv.wait_for_held(1, timeout=None)  # a worker's request on the wire, never answered
    sent = time.monotonic()
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate()
    took = time.monotonic() - sent
    assert driver.returncode == 143, err
    assert took < grace + 5, f"exit {took:.1f}s after SIGTERM"  # the README's promise: the grace + a few seconds
    srv.release()
    _wait_for(lambda: not _slice_workers(), "Ray to end the stopped driver's tasks")

    rerun = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env)

    assert rerun.returncode == 0, rerun.stderr
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)


def test_rerun_after_a_driver_kill_says_what_it_recovered_from_the_workers_journals(tmp_path, srv, ray_address):
    src, text_of = _inputs(tmp_path, files=1, rows=600)
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 10}, output={"shard_rows": 600})
    out = tmp_path / "out"
    env = _env(RAY_ADDRESS=ray_address)

    driver = start_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "1", env=env)
    srv.wait_for_requests(15, timeout=None)
    srv.hold()
    srv.wait_for_held(1, timeout=None)

    def journaled() -> int:
        return json.loads(run_cli("status", str(job), "--json").stdout).get("rows_answered_uncommitted", 0)

    _wait_for(lambda: journaled() >= 50, "answers in the worker's journal")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # the answers stay held until Ray has ended the dead driver's worker: released sooner, the worker could
    # finish its unit before Ray notices, and the rerun would rightly find nothing left to recover
    _wait_for(lambda: not _slice_workers(), "Ray to end the dead driver's tasks")
    srv.release()

    rerun = run_cli("run", str(job), "--engine", "ray", "--workers", "1", env=env)

    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "_report.json").read_text())
    recovered = report["after_crash"]["rows_recovered_from_journal"]
    assert recovered >= 50, report["after_crash"]
    assert f"after the interrupted run: {recovered:,} rows recovered from its journal" in rerun.stderr
    assert_vectors(read_output(out), text_of, 16)


_COUNTING_DRIVER = (
    "import sys, onnxruntime\n"
    "made = []\n"
    "class Counted(onnxruntime.InferenceSession):\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        made.append(1)\n"
    "        super().__init__(*args, **kwargs)\n"
    "onnxruntime.InferenceSession = Counted\n"
    "from batchembed.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(f'driver onnx sessions: {len(made)}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_driver_of_a_local_model_job_does_not_load_the_model_its_workers_run(tmp_path, ray_address):
    pytest.importorskip("onnxruntime")
    from batchembed.providers.local import LocalEmbedder

    src, text_of = _inputs(tmp_path, files=1, rows=60)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(src), "text": "text", "id": "id"},
            "model": {"provider": "local"},  # no server: the model runs on the workers
            "limits": {"batch_inputs": 16, "concurrency": 2},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 20},
        },
    )

    result = subprocess.run(
        [sys.executable, "-c", _COUNTING_DRIVER, "run", str(job), "--quiet", "--engine", "ray", "--workers", "2"],
        capture_output=True,
        text=True,
        env=_env(RAY_ADDRESS=ray_address),
        cwd=ROOT,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert "driver onnx sessions: 0" in result.stderr
    assert json.loads((tmp_path / "out" / "_report.json").read_text())["dimensions"] == 384
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    ids = table.column("id").to_pylist()
    got = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(ids), -1)
    want, _ = LocalEmbedder().encode([text_of[i] for i in ids])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert run_cli("verify", str(job)).returncode == 0


def test_workers_share_one_rate_limit(tmp_path, srv, ray_address):
    src, text_of = _inputs(tmp_path, files=3, rows=500)
    rpm = 600
    srv.rate_limit(rpm=rpm)
    job = job_for(tmp_path, srv, src, limits={"requests_per_minute": rpm, "batch_inputs": 10})

    result = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "3", env=_env(RAY_ADDRESS=ray_address))

    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), text_of, 16)
    throttled = sum(1 for r in srv.requests if r.status == 429)
    assert throttled < 0.02 * len(srv.requests), f"{throttled} of {len(srv.requests)} requests were 429"
    # three workers each at the full rate would send three times this many
    assert most_in_window([r.received_at for r in srv.requests], 5.0) <= paced_allowance(rpm, 5.0)
    assert json.loads(run_cli("status", str(job), "--json").stdout)["complete"]


def test_engine_ray_without_ray_installed_says_what_to_install(tmp_path, srv):
    src, _ = _inputs(tmp_path, files=1, rows=10)
    job = job_for(tmp_path, srv, src)
    blocker = tmp_path / "noray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{env['PYTHONPATH']}"

    result = run_cli("run", str(job), "--engine", "ray", env=env)

    assert result.returncode == 1
    assert "pip install 'batchembed[ray]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_refresh_on_ray_buys_only_new_texts_and_publishes_once(tmp_path, srv, ray_address):
    src, text_of = _inputs(tmp_path, files=3, rows=200)
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 20}, output={"shard_rows": 100})
    env = _env(RAY_ADDRESS=ray_address)
    assert run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env).returncode == 0
    # f1 loses its last 50 rows and changes 10 texts; f3 is new
    ids = list(range(200, 350))
    texts = {i: text_of[i] for i in ids}
    for i in ids[:10]:
        texts[i] = f"changed on day two {i}"
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [texts[i] for i in ids]}), src / "f1.parquet")
    fresh = make_texts(100, seed=99)
    pq.write_table(pa.table({"id": pa.array(range(900, 1000), pa.int64()), "text": fresh}), src / "f3.parquet")
    want = {i: t for i, t in text_of.items() if not 200 <= i < 400}
    want.update(texts)
    want.update(zip(range(900, 1000), fresh, strict=True))
    srv.reset_records()

    result = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env)

    assert result.returncode == 0, result.stderr
    assert sorted(srv.received_texts()) == sorted([texts[i] for i in ids[:10]] + fresh)
    out = tmp_path / "out"
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(want)
    assert_vectors(table, want, 16)
    from deltalake import DeltaTable

    published = DeltaTable(str(out)).to_pyarrow_table()
    assert sorted(published.column("id").to_pylist()) == sorted(want)
    assert run_cli("verify", str(job), env=env).returncode == 0


def test_a_ray_driver_syncs_the_job_s_sinks_after_it_publishes(tmp_path, srv, ray_address):
    """[[sink]] tables are synced by the driver right after it publishes the table (issue 29)."""
    pytest.importorskip("psycopg")
    pytest.importorskip("lancedb")
    from tests.pgserver import Postgres
    from tests.sinkcheck import add_sinks
    from tests.test_sinks_modes import _assert_equal, _days

    data, _ = _days(tmp_path)
    job = add_sinks(
        job_for(tmp_path, srv, data, input={"path": str(data), "keep": ["title"]}, output={"shard_rows": 50}),
        {"kind": "postgres", "table": "doc_vectors"},
        {"kind": "lancedb", "uri": str(tmp_path / "lance"), "table": "doc_vectors"},
    )
    postgres = Postgres().start()
    try:
        dsn = postgres.database("ray")
        env = _env(BATCHEMBED_PG_DSN=dsn, RAY_ADDRESS=ray_address)
        result = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "1", env=env)
        assert result.returncode == 0, result.stderr
        assert "sink lancedb table doc_vectors" in result.stderr and "loaded at version 0: 300 rows" in result.stderr
        _assert_equal(tmp_path / "out", dsn, str(tmp_path / "lance"), env, job)
    finally:
        postgres.stop()


def test_refresh_on_ray_with_a_new_first_file_and_a_removed_middle_file_is_exact(tmp_path, srv, ray_address):
    src, text_of = _inputs(tmp_path, files=3, rows=200)
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 20}, output={"shard_rows": 120})
    env = _env(RAY_ADDRESS=ray_address)
    assert run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env).returncode == 0
    # a file sorting first is new (every later unit moves), the middle file is gone
    fresh = [f"a new first file {i}" for i in range(150)]
    pq.write_table(pa.table({"id": pa.array(range(900, 1050), pa.int64()), "text": fresh}), src / "a.parquet")
    (src / "f1.parquet").unlink()
    want = {i: t for i, t in text_of.items() if not 200 <= i < 400}
    want.update(zip(range(900, 1050), fresh, strict=True))
    srv.reset_records()

    result = run_cli("run", str(job), "--quiet", "--engine", "ray", "--workers", "2", env=env)

    assert result.returncode == 0, result.stderr
    assert sorted(srv.received_texts()) == sorted(fresh)
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    published = ds.dataset(DeltaTable(str(tmp_path / "out")).file_uris(), format="parquet").to_table()
    ids = published.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(want)
    assert_vectors(published, want, 16)
    assert run_cli("verify", str(job), env=env).returncode == 0
