"""The batch tier with its output in a bucket (moto's S3 server): the ledger lives as ``_batch/`` objects
through the same store as the shards, and a waiting run resumes from them."""

from __future__ import annotations

import pyarrow as pa

from batchembed.testing.batchapi import FakeBatchProvider
from tests.conftest import assert_vectors, cli_env, make_texts, run_here, write_job


def test_batch_ledger_in_a_bucket(tmp_path, s3):
    bucket = s3.new_bucket()
    texts = make_texts(300, seed=5)
    s3.put_table(bucket, "in/data.parquet", pa.table({"id": pa.array(range(300), pa.int64()), "text": texts}))
    fake = FakeBatchProvider(dim=16)
    fake.hold_batches = True
    model = {"provider": "openai", "base_url": fake.url, "name": "fake", "tier": "batch", "batch_poll_seconds": 0}
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": f"s3://{bucket}/in/data.parquet", "text": "text", "id": "id"},
            "model": {**model, "batch_inputs": 120},
            "limits": {"batch_inputs": 32},
            "output": {"path": f"s3://{bucket}/out", "shard_rows": 150},
        },
    )
    env = cli_env(**s3.env(), OPENAI_API_KEY="sk-test")
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=env).returncode == 75
    keys = s3.keys(bucket, "out/_batch/")
    assert "out/_batch/job.json" in keys and "out/_batch/p00002/a0.items.parquet" in keys
    fake.hold_batches = False
    r = run_here(fake, "run", str(job), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert len(fake.created) == 3 and sorted(fake.billed_texts) == sorted(texts)
    assert_vectors(s3.read_output(bucket, "out"), dict(enumerate(texts)), 16)
    assert not [k for k in s3.keys(bucket, "out/_batch/") if k.endswith(".parquet")]  # pruned once complete
    assert run_here(None, "verify", str(job), env=env).returncode == 0
