"""A bucket that does not exist is named as such, for the output and the input (a real moto S3 server)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import cli_env, job_for, run_here


def test_output_in_a_missing_bucket_names_the_bucket_for_run_status_and_verify(tmp_path, s3, fake):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), src)
    job = job_for(tmp_path, fake, src, output={"path": "s3://no-such-bucket-out/out"})
    env = cli_env(**s3.env())

    for command in ("run", "status", "verify"):
        result = run_here(fake, command, str(job), env=env)
        assert result.returncode == 1, (command, result.stderr)
        assert "the bucket 'no-such-bucket-out' does not exist" in result.stderr, (command, result.stderr)
        assert "probe" not in result.stderr and "_lease" not in result.stderr
    assert fake.requests == []


@pytest.mark.parametrize("path", ["s3://no-such-bucket-in/in/*.parquet", "s3://no-such-bucket-in/in/a.parquet"])
def test_input_in_a_missing_bucket_names_the_bucket_not_an_empty_glob(tmp_path, s3, fake, path):
    job = job_for(tmp_path, fake, path)  # type: ignore[arg-type]
    env = cli_env(**s3.env())

    for command in ("run", "plan"):
        result = run_here(fake, command, str(job), env=env)
        assert result.returncode == 1, (command, result.stderr)
        assert "the bucket 'no-such-bucket-in' does not exist" in result.stderr, (command, result.stderr)
        assert "matches no" not in result.stderr
