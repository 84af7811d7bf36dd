"""The shared table in a bucket (a real S3-compatible server, moto): compaction and vacuum by others taken
in, a refresh afterwards buying only new texts, an append by others refused before buying until the table is
rebuilt, and a lost ``_delta_log/`` rebuilt from the manifest."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.conftest import assert_vectors, cli_env, make_texts, run_here, write_job

pytest.importorskip("obstore")

ROWS = 150


def _setup(tmp_path, s3, fake):
    bucket = s3.new_bucket()
    texts = make_texts(3 * ROWS, seed=41)
    for f in range(3):
        ids = pa.array(range(f * ROWS, (f + 1) * ROWS), pa.int64())
        s3.put_table(bucket, f"in/f{f}.parquet", pa.table({"id": ids, "text": texts[f * ROWS : (f + 1) * ROWS]}))
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": f"s3://{bucket}/in/*.parquet", "text": "text", "id": "id"},
            "model": {"provider": "openai-compatible", "base_url": fake.url, "name": "fake", "timeout": 5.0},
            "limits": {"batch_inputs": 25, "concurrency": 4},
            "output": {"path": f"s3://{bucket}/out", "shard_rows": 75},
        },
    )
    env = cli_env(**s3.env())
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    fake.reset_records()
    options = {**s3.env(), "AWS_ALLOW_HTTP": "true"}
    options.pop("AWS_EC2_METADATA_DISABLED")
    return bucket, job, env, options, dict(enumerate(texts))


def _expect(s3, bucket, want) -> None:
    vector = pa.list_(pa.float32(), 16)
    parts = []
    for key in s3.table_keys(bucket, "out"):
        t = pq.read_table(io.BytesIO(s3.get(bucket, key)), columns=["id", "embedding"])
        parts.append(pa.table({"id": t.column("id"), "embedding": pc.cast(t.column("embedding"), vector)}))
    table = pa.concat_tables(parts)
    assert sorted(table.column("id").to_pylist()) == sorted(want)
    assert_vectors(table, want, 16)


def _foreign(s3, bucket) -> set[str]:
    return {k for k in s3.keys(bucket, "out/part-") if "-c000" in k}


def test_compaction_and_vacuum_in_a_bucket_are_taken_in_and_a_refresh_buys_only_new_texts(tmp_path, s3, fake):
    bucket, job, env, options, want = _setup(tmp_path, s3, fake)
    table = DeltaTable(f"s3://{bucket}/out", storage_options=options)
    table.optimize.compact()
    table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    compacted = _foreign(s3, bucket)
    assert compacted

    again = run_here(fake, "run", str(job), "--quiet", env=env)

    assert again.returncode == 0, again.stderr
    assert "taken in, its rows kept" in again.stderr
    assert not fake.requests and _foreign(s3, bucket) == compacted
    _expect(s3, bucket, want)
    assert run_here(None, "verify", str(job), env=env).returncode == 0

    f2 = pq.read_table(io.BytesIO(s3.get(bucket, "in/f2.parquet")))
    texts = f2.column("text").to_pylist()
    texts[9] = "edited in the bucket"
    s3.put_table(bucket, "in/f2.parquet", f2.set_column(1, "text", pa.array(texts)))
    want[2 * ROWS + 9] = "edited in the bucket"
    refresh = run_here(fake, "run", str(job), "--quiet", env=env)

    assert refresh.returncode == 0, refresh.stderr
    assert fake.received_texts() == ["edited in the bucket"]
    _expect(s3, bucket, want)
    assert _foreign(s3, bucket) == compacted  # never deleted
    verify = run_here(None, "verify", str(job), env=env)
    assert verify.returncode == 0, verify.stdout


def test_an_append_in_a_bucket_is_refused_then_rebuilt_and_a_lost_log_comes_back(tmp_path, s3, fake):
    bucket, job, env, options, want = _setup(tmp_path, s3, fake)
    uri = f"s3://{bucket}/out"
    row = DeltaTable(uri, storage_options=options).to_pyarrow_dataset().to_table(filter=pc.field("id") == 0)
    write_deltalake(uri, row, mode="append", storage_options=options)

    refused = run_here(fake, "run", str(job), "--quiet", env=env)

    assert refused.returncode == 1 and "another writer changed its rows" in refused.stderr
    assert not fake.requests and not fake.canary_requests()
    assert run_here(None, "verify", str(job), env=env).returncode == 1
    rebuilt = run_here(fake, "run", str(job), "--quiet", "--rebuild-table", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    _expect(s3, bucket, want)

    for key in s3.keys(bucket, "out/_delta_log/"):
        s3.client.delete_object(Bucket=bucket, Key=key)
    assert run_here(None, "verify", str(job), env=env).returncode == 1
    again = run_here(fake, "run", str(job), "--quiet", env=env)
    assert again.returncode == 0 and "rebuilt the Delta table from the manifest" in again.stderr
    assert not fake.requests
    _expect(s3, bucket, want)
    assert run_here(None, "verify", str(job), env=env).returncode == 0
