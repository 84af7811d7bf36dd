"""A real ``batchembed`` process SIGKILLed at every step of a sink sync (``BATCHEMBED_FAILPOINT``), on a first
load and on a refresh: the next run leaves each sink equal to the Delta table, no row applied twice and none
missing, and ``verify`` says so."""

from __future__ import annotations

import itertools
import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.sinks.sync import FAILPOINTS
from tests.conftest import cli_env, job_for, make_texts, run_cli, run_here
from tests.sinkcheck import add_sinks, assert_same, lance_rows, postgres_rows, table_rows

pytest.importorskip("psycopg")
pytest.importorskip("lancedb")

COLUMNS = ["id", "title", "embedding"]
_names = itertools.count()


def _write(path, rows: dict[int, str]) -> None:
    existed = path.exists()
    ids = sorted(rows)
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "text": [rows[i] for i in ids], "title": [f"t{i}" for i in ids]}),
        path,
    )
    if existed:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _job(tmp_path, srv, postgres):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(400, seed=9)
    _write(data / "a.parquet", dict(enumerate(texts[:200])))
    _write(data / "b.parquet", {i: texts[i] for i in range(200, 400)})
    job = job_for(tmp_path, srv, data, input={"path": str(data / "*.parquet"), "keep": ["title"]},
                  output={"shard_rows": 100})  # fmt: skip
    add_sinks(
        job,
        {"kind": "postgres", "table": "doc_vectors", "index": "hnsw"},
        {"kind": "lancedb", "uri": str(tmp_path / "lance"), "table": "doc_vectors"},
    )
    dsn = postgres.database(f"kill{next(_names)}")
    return job, data, texts, cli_env(BATCHEMBED_PG_DSN=dsn), dsn


def _change_day(data, texts) -> None:
    """b: 15 texts edited, 25 rows gone, 10 new rows."""
    rows = {i: texts[i] for i in range(200, 400) if not 300 <= i < 325}
    rows |= {i: f"edited {i}" for i in range(200, 215)} | {900 + k: f"new row {k}" for k in range(10)}
    _write(data / "b.parquet", rows)


def _assert_equal(tmp_path, dsn, env, job) -> None:
    table = table_rows(tmp_path / "out", COLUMNS)
    assert_same(postgres_rows(dsn, "doc_vectors", COLUMNS), table)
    assert_same(lance_rows(str(tmp_path / "lance"), "doc_vectors", COLUMNS), table)
    result = run_here(None, "verify", str(job), env=env)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("equals the table") == 2


def _killed(job, env, point) -> None:
    result = run_cli("run", str(job), "--quiet", env={**env, "BATCHEMBED_FAILPOINT": point})
    assert result.returncode == -signal.SIGKILL, f"{point}: {result.returncode} {result.stderr}"


@pytest.mark.parametrize("point", FAILPOINTS)
def test_a_refresh_killed_at_any_step_of_a_sync_then_rerun_leaves_the_sinks_equal(tmp_path, srv, fake, postgres, point):
    job, data, texts, env, dsn = _job(tmp_path, srv, postgres)
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    _change_day(data, texts)

    _killed(job, env, point)
    rerun = run_here(fake, "run", str(job), "--quiet", env=env)

    assert rerun.returncode == 0, rerun.stderr
    _assert_equal(tmp_path, dsn, env, job)
    if point != "sink-lancedb-tagged":  # the postgres sync committed before lancedb's steps
        assert "reloaded in full" not in rerun.stderr  # the rows that left were still there to compare


@pytest.mark.parametrize("point", ["sink-postgres-copied", "sink-postgres-before-commit", "sink-lancedb-applied"])
def test_a_first_load_killed_then_rerun_loads_each_sink_once(tmp_path, srv, fake, postgres, point):
    job, _, _, env, dsn = _job(tmp_path, srv, postgres)

    _killed(job, env, point)
    rerun = run_cli("run", str(job), "--quiet", env=env)

    assert rerun.returncode == 0, rerun.stderr
    _assert_equal(tmp_path, dsn, env, job)


def test_a_lancedb_sync_killed_after_its_commit_and_again_while_undoing_it(tmp_path, srv, fake, postgres):
    job, data, texts, env, dsn = _job(tmp_path, srv, postgres)
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    _change_day(data, texts)

    _killed(job, env, "sink-lancedb-applied")  # committed, not tagged: the table moved past its recorded version
    _killed(job, env, "sink-lancedb-restored")  # the next run undid it, then was killed too
    sync = run_cli("sync", str(job), env=env)

    assert sync.returncode == 0, sync.stderr
    assert (
        "lancedb table doc_vectors" in sync.stderr and "25 rows written, 25 deleted" in sync.stderr.split("lancedb")[-1]
    )
    _assert_equal(tmp_path, dsn, env, job)
