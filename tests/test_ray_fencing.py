"""A Ray worker writes only while the driver that started it holds the output (its fencing token).

The orphan here is the Ray task itself (``run_slice``, the function Ray runs on a worker) started in
this process with the driver's token, its rate budget a ``JobBudget`` called inline instead of
through an actor: what is under test is what the worker does when its driver is gone, not Ray's
scheduling (Ray itself ends a dead driver's tasks when it notices; a worker that outlives it must
still not write).
"""

from __future__ import annotations

import json
import signal
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.job.config import load_job
from batchembed.output.manifest import Manifest
from batchembed.output.store import open_store
from batchembed.output.store.fencing import FenceToken
from batchembed.output.store.locks import LeaseLost
from batchembed.run.engines.budget import JobBudget
from batchembed.run.engines.ray_engine import run_slice
from tests.conftest import assert_vectors, cli_env, environment, job_for, make_texts, read_output, run_here, start_cli

ROWS = 600


class _Ready:
    """An already-computed value to ``await`` (what an actor call's ObjectRef gives a worker)."""

    def __init__(self, value) -> None:
        self.value = value

    def __await__(self):
        return self.value
        yield  # pragma: no cover - makes this a generator


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return _Ready(self.fn(*args))


class InlineBudget:
    """A ``JobBudget`` with the actor-handle calling convention (``budget.reserve.remote(...)``)."""

    def __init__(self, budget: JobBudget) -> None:
        self.grant, self.reserve = _Method(budget.grant), _Method(budget.reserve)
        self.pause, self.learn, self.throttled = _Method(budget.pause), _Method(budget.learn), _Method(budget.throttled)


def _shards(where, out, s3, bucket) -> dict:
    """Every shard of the output and what would change if it were rewritten (inode and mtime, or ETag)."""
    if where == "local":
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*")}
    listing = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/part-").get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}


def _segments(where, out, s3, bucket) -> list[str]:
    """The journal segments in the output (files, or objects)."""
    if where == "local":
        return sorted(str(p.relative_to(out)) for p in out.glob("_journal/**/*.seg"))
    listing = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/_journal/").get("Contents", [])
    return sorted(o["Key"] for o in listing)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_orphaned_worker_of_a_killed_driver_cannot_write_into_the_output_a_new_run_owns(
    tmp_path, srv, fake, where, request
):
    src = tmp_path / "in"
    src.mkdir()
    texts = make_texts(ROWS, seed=7)
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts}), src / "a.parquet")
    env = cli_env()
    bucket = s3 = None
    output = {"shard_rows": 200}
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.new_bucket()
        env.update(s3.env())
        output["path"] = f"s3://{bucket}/out"
    job = job_for(tmp_path, srv, src, output=output, limits={"batch_inputs": 20})
    out = tmp_path / "out"

    with environment(env):
        srv.hold()
        driver = start_cli("run", str(job), "--quiet", env=env)
        srv.wait_for_held(1, timeout=None)  # admitted, manifest written, its canary in flight
        config = load_job(job)
        store = open_store(config)
        holder, _ = store.read_lock("_lease/job")
        token = FenceToken("_lease/job", holder["run"])  # what the driver hands each of its workers
        manifest = Manifest.load(store)
        outcome: dict = {}

        def orphan() -> None:
            try:
                for _ in run_slice(config, (0, 1), manifest, InlineBudget(JobBudget(6000, 10**7)), False, token):
                    pass
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=orphan, daemon=True)
        worker.start()
        srv.wait_for_held(2, timeout=None)  # the worker is at work too (its canary is in flight)
        driver.send_signal(signal.SIGKILL)
        driver.wait()

        new_run = run_here(fake, "run", str(job), "--quiet", env=env)
        assert new_run.returncode == 0, new_run.stderr
        committed = _shards(where, out, s3, bucket)
        srv.release()  # the orphan's answers arrive: it finishes its first unit and tries to commit it
        worker.join()

        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), LeaseLost), outcome
        assert "no longer holds the output" in str(outcome["error"])
        assert _shards(where, out, s3, bucket) == committed  # not one shard replaced or added
        assert _segments(where, out, s3, bucket) == []  # nor a journal segment left behind
        table = s3.read_output(bucket, "out") if s3 else read_output(out)
        assert sorted(table.column("id").to_pylist()) == list(range(ROWS))
        assert_vectors(table, dict(enumerate(texts)), 16)
        if where == "local":
            recorded = {s["name"] for s in json.loads((out / "_manifest.json").read_text())["shards"]}
            assert {p.name for p in out.glob("part-*")} == recorded
        verify = run_here(None, "verify", str(job), env=env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
