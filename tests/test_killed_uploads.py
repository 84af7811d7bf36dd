"""A writer killed mid-shard leaves an incomplete multipart upload (its parts billed); the next writer of
that shard aborts it (a real moto S3 server, a real ``batchembed`` process killed with SIGKILL)."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from batchembed.testing import FakeServer
from tests.conftest import answer_until, assert_vectors, cli_env, kill_held, make_texts, run_here, start_cli, write_job

ROWS = 12000
DIM = 1024  # 4 KB a row: the first piece of a unit (4,096 rows) is ~16 MB, several 5 MB parts


def _uploads(s3, bucket) -> dict[str, str]:
    listing = s3.client.list_multipart_uploads(Bucket=bucket, Prefix="out/").get("Uploads", [])
    return {u["UploadId"]: u["Key"] for u in listing}


def _wait_for(condition) -> None:
    """Poll until ``condition`` holds, however long a loaded machine takes (pytest-timeout ends a hang)."""
    while not condition():
        time.sleep(0.1)


@pytest.mark.parametrize("shard", [None, "0/2"])
def test_resume_aborts_the_upload_a_killed_writer_left(tmp_path, s3, shard):
    bucket = s3.new_bucket()
    texts = make_texts(ROWS, seed=2)
    s3.put_table(bucket, "in/data.parquet", pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts}))
    env = cli_env(**s3.env())
    part = ["--shard", shard] if shard else []
    with FakeServer(dim=DIM) as srv:
        job = write_job(
            tmp_path / "job.toml",
            {
                "input": {"path": f"s3://{bucket}/in/data.parquet", "text": "text", "id": "id"},
                "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake", "timeout": 10.0},
                "limits": {"batch_inputs": 256, "concurrency": 4},
                "output": {"path": f"s3://{bucket}/out", "shard_rows": 10000},  # units part-00000, part-00001
            },
        )
        srv.hold()
        proc = start_cli("run", str(job), "--quiet", *part, env=env)
        # the first piece (4,096 rows, 16 requests) is answered; the rest of unit part-00000 is held
        answer_until(srv, lambda: len(srv.requests) >= 24)

        def shard_upload() -> str | None:  # the unit's file of this attempt: out/part-00000-<attempt>.parquet
            return next((k for k in _uploads(s3, bucket).values() if k.startswith("out/part-00000-")), None)

        _wait_for(lambda: shard_upload() is not None or proc.poll() is not None)  # an upload begun
        assert proc.poll() is None, proc.communicate()[1]
        kill_held(proc, srv)
        stale = _uploads(s3, bucket)
        assert shard_upload() in stale.values(), stale  # with the journal's segment, maybe

        resumed = run_here(srv, "run", str(job), "--quiet", *part, env=env)

    assert resumed.returncode == 0, resumed.stderr
    assert not set(stale) & set(_uploads(s3, bucket))  # the killed run's upload (and its parts) is gone
    table = s3.read_output(bucket, "out")
    owned = [i for i in range(ROWS) if not shard or i < 10000]
    assert sorted(table.column("id").to_pylist()) == owned
    assert_vectors(table, {i: texts[i] for i in owned}, DIM)
