"""Sinks in every mode that publishes: ``--shard`` parts (the part completing the split syncs), the batch
tier, and an output and a LanceDB sink in a bucket (moto S3). (A Ray driver: ``test_ray_engine.py``, on its
module's Ray.)"""

from __future__ import annotations

import itertools
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.testing.batchapi import FakeBatchProvider
from tests.conftest import cli_env, job_for, make_texts, run_here, write_job
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


def _days(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(600, seed=11)
    for f in range(3):
        _write(data / f"f{f}.parquet", {i: texts[i] for i in range(f * 100, f * 100 + 100)})
    return data, texts


def _next_day(data, texts) -> None:
    """f1: 10 texts edited, 20 rows gone; f3 new (30 rows)."""
    rows = {i: texts[i] for i in range(100, 200) if not 150 <= i < 170} | {i: f"edited {i}" for i in range(100, 110)}
    _write(data / "f1.parquet", rows)
    _write(data / "f3.parquet", {i: texts[i] for i in range(400, 430)})


def _sinks(job, tmp_path, lance_uri=None):
    return add_sinks(
        job,
        {"kind": "postgres", "table": "doc_vectors"},
        {"kind": "lancedb", "uri": lance_uri or str(tmp_path / "lance"), "table": "doc_vectors"},
    )


def _assert_equal(out, dsn, lance_uri, env, job, storage_options=None) -> None:
    table = table_rows(out, COLUMNS) if not str(out).startswith("s3://") else None
    if table is None:
        from deltalake import DeltaTable

        dt = DeltaTable(str(out), storage_options=storage_options)
        records = dt.to_pyarrow_dataset().to_table(columns=COLUMNS).to_pylist()
        from tests.sinkcheck import _rows

        table = _rows(records, COLUMNS)
    assert_same(postgres_rows(dsn, "doc_vectors", COLUMNS), table)
    assert_same(lance_rows(lance_uri, "doc_vectors", COLUMNS, storage_options), table)
    result = run_here(None, "verify", str(job), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("equals the table") == 2


def test_shard_parts_sync_the_sinks_when_the_split_completes(tmp_path, fake, postgres):
    data, texts = _days(tmp_path)
    job = _sinks(job_for(tmp_path, fake, data, input={"path": str(data), "keep": ["title"]},
                         output={"shard_rows": 50}), tmp_path)  # fmt: skip
    dsn = postgres.database(f"modes{next(_names)}")
    env = cli_env(BATCHEMBED_PG_DSN=dsn)
    for day in range(2):
        first = run_here(fake, "run", str(job), "--quiet", "--shard", "0/2", env=env)
        assert first.returncode == 0, first.stderr
        assert "sink postgres" not in first.stderr  # a part alone publishes nothing: no sync yet
        last = run_here(fake, "run", str(job), "--quiet", "--shard", "1/2", env=env)
        assert last.returncode == 0, last.stderr
        assert f"sink postgres table doc_vectors: {'loaded' if day == 0 else 'synced'} at version {day}" in (
            last.stderr.replace("synced to", "synced at")
        )
        _assert_equal(tmp_path / "out", dsn, str(tmp_path / "lance"), env, job)
        _next_day(data, texts)


def test_the_batch_tier_syncs_the_sinks_once_its_batches_are_collected(tmp_path, postgres):
    data, _texts = _days(tmp_path)
    fake = FakeBatchProvider()
    env = cli_env(OPENAI_API_KEY="sk-test", BATCHEMBED_PG_DSN=postgres.database(f"modes{next(_names)}"))
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(data), "text": "text", "id": "id", "keep": ["title"]},
            "model": {"provider": "openai", "base_url": fake.url, "name": "fake", "tier": "batch",
                      "batch_poll_seconds": 0, "batch_inputs": 120},
            "limits": {"batch_inputs": 32, "max_retries": 2},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 100},
        },
    )  # fmt: skip
    _sinks(job, tmp_path)
    # one day only: a batch-tier refresh over changed inputs fails before the sinks are reached, with or
    # without sinks ("_batch/p00000/a0.results.parquet" gone after the first run pruned its ledger)
    result = run_here(fake, "run", str(job), "--no-wait", "--quiet", env=env)
    assert result.returncode == 75, result.stderr  # batches still running: nothing published, nothing synced
    assert "sink" not in result.stderr.replace(str(tmp_path), "")
    result = run_here(fake, "run", str(job), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert "sink postgres table doc_vectors: loaded at version 0: 300 rows" in result.stderr
    _assert_equal(tmp_path / "out", env["BATCHEMBED_PG_DSN"], str(tmp_path / "lance"), env, job)


def test_an_output_and_a_lancedb_sink_in_a_bucket(tmp_path, fake, postgres, s3):
    bucket = s3.new_bucket()
    data, texts = _days(tmp_path)
    lance_uri = f"s3://{bucket}/lance"
    job = _sinks(
        job_for(tmp_path, fake, data, input={"path": str(data), "keep": ["title"]},
                output={"path": f"s3://{bucket}/out", "shard_rows": 50}),
        tmp_path,
        lance_uri,
    )  # fmt: skip
    dsn = postgres.database(f"modes{next(_names)}")
    env = cli_env(**s3.env(), BATCHEMBED_PG_DSN=dsn)
    options = {"aws_endpoint": s3.url, "aws_allow_http": "true", "aws_region": "us-east-1",
               "aws_access_key_id": s3.env()["AWS_ACCESS_KEY_ID"],
               "aws_secret_access_key": s3.env()["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    for day in range(2):
        result = run_here(fake, "run", str(job), "--quiet", env=env)
        assert result.returncode == 0, result.stderr
        if day:
            assert "sink lancedb table doc_vectors at s3://" in result.stderr and "20 deleted" in result.stderr
        assert any(k.startswith("lance/doc_vectors.lance/") for k in s3.keys(bucket, "lance/"))
        _assert_equal(f"s3://{bucket}/out", dsn, lance_uri, env, job, options)
        _next_day(data, texts)
