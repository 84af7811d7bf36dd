"""What ``status`` says about an output in a bucket, and who may take a lease over (a real moto server)."""

from __future__ import annotations

import json
import os
import signal

import pyarrow as pa
import pytest

from tests.conftest import assert_vectors, cli_env, hold_mid_run, make_texts, run_here, write_job
from tests.s3server import MotoServer

pytest.importorskip("obstore")

N = 600
SHARD = 150


def _s3_job(tmp_path, s3, srv, seed, **storage):
    """``N`` texts uploaded to a new bucket and a job from there to its out/: (texts, env, job, bucket)."""
    bucket = s3.new_bucket()
    texts = make_texts(N, seed=seed)
    s3.put_table(bucket, "in/data.parquet", pa.table({"id": pa.array(range(N), pa.int64()), "text": texts}))
    sections = {
        "input": {"path": f"s3://{bucket}/in/data.parquet", "text": "text", "id": "id"},
        "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake", "timeout": 5.0},
        "limits": {"batch_inputs": 20, "concurrency": 4, "max_retries": 6},
        "output": {"path": f"s3://{bucket}/out", "shard_rows": SHARD},
    }
    if storage:
        sections["storage"] = storage
    return texts, cli_env(**s3.env()), write_job(tmp_path / "job.toml", sections), bucket


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    return stat[stat.rfind(")") + 2]


def test_a_killed_holder_not_yet_reaped_counts_as_dead_and_its_lease_is_taken_over(tmp_path, s3, srv):
    texts, env, job, bucket = _s3_job(tmp_path, s3, srv, seed=31, lease_seconds=600)
    holder = hold_mid_run(srv, job, 5, env=env)
    srv.wait_for_held(1, timeout=None)
    holder.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)  # dead, but its parent has not reaped it yet
    srv.release()
    try:
        assert _state(holder.pid) == "Z"
        lease = json.loads(s3.get(bucket, "out/_lease/job.json"))
        assert lease["pid"] == holder.pid

        result = run_here(srv, "run", str(job), "--quiet", env=env)  # the lease has ~10 minutes left

        assert result.returncode == 0, result.stderr
    finally:
        holder.wait()
    table = s3.read_output(bucket, "out")
    assert table.column("id").to_pylist() == list(range(N))
    assert_vectors(table, dict(enumerate(texts)), 16)


def test_status_on_s3_is_not_complete_once_a_recorded_shard_was_deleted(tmp_path, s3, fake):
    _texts, env, job, bucket = _s3_job(tmp_path, s3, fake, seed=32)
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    assert json.loads(run_here(None, "status", str(job), "--json", env=env).stdout)["complete"] is True
    (shard,) = [k for k in s3.keys(bucket, "out/") if k.startswith("out/part-00002-")]
    name = shard.removeprefix("out/")
    s3.client.delete_object(Bucket=bucket, Key=shard)

    doc = json.loads(run_here(None, "status", str(job), "--json", env=env).stdout)
    text = run_here(None, "status", str(job), env=env).stdout

    assert doc["complete"] is False
    assert doc["damaged"] == [f"{name} is recorded in _manifest.json but missing"]
    assert "state:    incomplete" in text and f"damaged:  {name} is recorded" in text
    assert run_here(None, "verify", str(job), env=env).returncode == 1


def test_status_on_s3_names_the_run_holding_the_lease_now(tmp_path, s3, srv):
    _texts, env, job, _bucket = _s3_job(tmp_path, s3, srv, seed=33)
    proc = hold_mid_run(srv, job, 5, env=env)
    try:
        doc = json.loads(run_here(None, "status", str(job), "--json", env=env).stdout)
        verify = run_here(None, "verify", str(job), env=env)
    finally:
        srv.release()
    assert proc.wait() == 0

    assert [(w["lease"], w["part"]) for w in doc["running"]] == [("_lease/job", None)]
    assert (
        f"pid {proc.pid} on host" in doc["running"][0]["holder"] and "lease valid until" in doc["running"][0]["holder"]
    )
    assert f"FAIL: the job is still running (pid {proc.pid} on host" in verify.stdout
    assert json.loads(run_here(None, "status", str(job), "--json", env=env).stdout)["running"] == []


def test_one_process_reads_inputs_from_the_endpoint_its_environment_names_now(tmp_path, s3, fake):
    # a library user (or this suite) running jobs against two S3 endpoints in one process: the cached
    # input filesystem must follow AWS_ENDPOINT_URL, not keep talking to the first endpoint
    other = MotoServer().start()
    try:
        for server, name in ((s3, "first"), (other, "second")):
            (tmp_path / name).mkdir()
            _texts, env, job, _bucket = _s3_job(tmp_path / name, server, fake, seed=34)
            result = run_here(fake, "run", str(job), "--quiet", env=env)
            assert result.returncode == 0, f"{name}: {result.stderr}"
    finally:
        other.stop()
