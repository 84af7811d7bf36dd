"""A SIGKILL at any moment of a refresh, then the same command: the output is exactly the current
inputs, the Delta table shows the old or the new table (never a mix), and answers bought before the
kill are not bought again."""

from __future__ import annotations

import signal

import pytest
from deltalake import DeltaTable

from tests.conftest import cli_env, hold_mid_run, job_for, kill_mid_run, make_texts, read_output, run_cli, run_here
from tests.test_refresh import _expect, _write

ROWS = 600


@pytest.fixture
def grown(tmp_path, srv):
    """A complete output over day0 + day1, then day1 edited (100 texts) and day2 added (300 rows)."""
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(2000, seed=11)
    _write(data / "day0.parquet", list(range(ROWS)), texts[:ROWS])
    _write(data / "day1.parquet", list(range(ROWS, 2 * ROWS)), texts[ROWS : 2 * ROWS])
    job = job_for(
        tmp_path,
        srv,
        data,
        input={"path": str(data / "*.parquet"), "text": "text", "id": "id"},
        limits={"batch_inputs": 10, "concurrency": 2},
        output={"shard_rows": 200},
    )
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    old = dict(enumerate(texts[: 2 * ROWS]))
    new = dict(old)
    for i in range(ROWS, ROWS + 100):
        new[i] = f"edited {i} " + texts[i]
    ids = list(range(ROWS, 2 * ROWS))
    _write(data / "day1.parquet", ids, [new[i] for i in ids])
    extra = list(range(2 * ROWS, 2 * ROWS + 300))
    _write(data / "day2.parquet", extra, texts[2 * ROWS : 2 * ROWS + 300])
    new.update({i: texts[i] for i in extra})
    srv.reset_records()
    return job, old, new


def _settled(tmp_path, srv, job, old, new):
    out = tmp_path / "out"
    # whatever moment the kill hit, a reader of the table sees the old or the new table, whole
    seen = DeltaTable(str(out)).to_pyarrow_table()
    assert sorted(seen.column("id").to_pylist()) in (sorted(old), sorted(new))
    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _expect(read_output(out), new)
    _expect(DeltaTable(str(out)).to_pyarrow_table(), new)
    assert (out / "_SUCCESS").exists()
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout
    bought = srv.received_texts()
    # only new texts are ever bought: 100 edited + 300 added, and nothing twice beyond what was in flight
    assert set(bought) <= {new[i] for i in range(ROWS, ROWS + 100)} | {new[i] for i in range(2 * ROWS, 2 * ROWS + 300)}
    assert len(bought) <= 400 * 1.05 + 2 * 10


@pytest.mark.parametrize(
    "point",
    ["refresh-begun", "shard-before-manifest", "before-publish", "published-before-retire", "retired-before-delete"],
)
def test_sigkill_at_each_step_of_a_refresh(tmp_path, srv, grown, point):
    job, old, new = grown
    crashed = run_cli("run", str(job), "--quiet", env=cli_env(BATCHEMBED_FAILPOINT=point))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    _settled(tmp_path, srv, job, old, new)


def test_sigkill_with_requests_in_flight_during_a_refresh(tmp_path, srv, grown):
    job, old, new = grown
    kill_mid_run(srv, job, 12)
    _settled(tmp_path, srv, job, old, new)


def test_a_file_rewritten_while_it_is_read_is_not_committed_from_that_read(tmp_path, srv):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(600, seed=12)
    _write(data / "one.parquet", list(range(600)), texts)
    job = job_for(
        tmp_path,
        srv,
        data,
        input={"path": str(data / "*.parquet"), "text": "text", "id": "id"},
        limits={"batch_inputs": 10, "concurrency": 2},
        output={"shard_rows": 600},  # one unit: it cannot commit before the rewrite below
    )
    proc = hold_mid_run(srv, job, 3)
    srv.wait_for_held(1, timeout=None)
    edited = [f"rewritten {i}" for i in range(600)]
    _write(data / "one.parquet", list(range(600)), edited)  # an upstream writer replaces it mid-read
    srv.release()
    assert proc.wait() == 1
    assert "one.parquet changed while this run read it" in proc.stderr.read()
    out = tmp_path / "out"
    assert not list(out.glob("part-*.parquet"))  # nothing of the torn read is committed

    result = run_here(srv, "run", str(job), "--quiet")  # the next run reads the file as it is now
    assert result.returncode == 0, result.stderr
    _expect(read_output(out), dict(enumerate(edited)))
