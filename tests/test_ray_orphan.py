"""An orphaned Ray worker, on a real local Ray: a worker whose driver died writes nothing into the output
the next run owns, and leaves none of its journal segments behind.

The orphan is a real Ray task (``run_slice`` on a worker process of this module's Ray) started by a
small driver script with the fencing token of a ``batchembed run`` that is then killed (SIGKILL): Ray
keeps the task running (its own driver, the script, is alive), as it does a worker that outlives its
driver, while a new run takes the output over and completes it. The orphan's answers are held by the
fake server until then.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.job.config import load_job
from batchembed.output.store import open_store
from tests.conftest import ROOT, job_for, make_texts, read_output, run_here, start_cli
from tests.test_ray_engine import _env, ray_address  # noqa: F401  (the module's local Ray: a fixture)

ROWS = 600

#: The orphan's driver: runs one slice of the job as a Ray task under the token given, prints how it ended.
_ORPHAN = """
import json, sys, ray
from batchembed.job.config import load_job
from batchembed.output.manifest import Manifest
from batchembed.output.store import open_store
from batchembed.output.store.fencing import FenceToken
from batchembed.run.engines.budget import JobBudget
from batchembed.run.engines.ray_engine import run_slice

job, run = sys.argv[1], sys.argv[2]
ray.init(address="auto", logging_level="ERROR")
config = load_job(job)
manifest = Manifest.load(open_store(config))
budget = ray.remote(JobBudget).options(num_cpus=0).remote(6000, 10**7)
task = ray.remote(run_slice).options(num_returns="streaming", num_cpus=1, max_retries=0)
try:
    for ref in task.remote(config, (0, 1), manifest, budget, False, FenceToken("_lease/job", run)):
        ray.get(ref)
    print(json.dumps({"ended": "done"}), flush=True)
except Exception as exc:
    cause = getattr(exc, "cause", None) or exc
    print(json.dumps({"ended": type(cause).__name__, "message": str(cause)}), flush=True)
"""


def test_an_orphaned_ray_worker_leaves_no_journal_segment_in_the_output(tmp_path, srv, fake, ray_address):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    texts = make_texts(ROWS, seed=11)
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts}), src / "a.parquet")
    job = job_for(tmp_path, srv, src, output={"shard_rows": 200}, limits={"batch_inputs": 20}, model={"timeout": 600})
    out = tmp_path / "out"
    env = _env(RAY_ADDRESS=ray_address)

    srv.hold()
    driver = start_cli("run", str(job), "--quiet", env=env)
    srv.wait_for_held(1, timeout=None)  # admitted: its lock taken, its canary in flight
    holder, _ = open_store(load_job(job)).read_lock("_lease/job")
    orphan = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(job), holder["run"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    srv.wait_for_held(2, timeout=None)  # the Ray worker is at work too (its canary is in flight)
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    new_run = run_here(fake, "run", str(job), "--quiet", env=env)
    assert new_run.returncode == 0, new_run.stderr
    srv.release()  # the orphan's answers arrive: it journals them, finishes its first unit, tries to commit
    stdout, stderr = orphan.communicate()

    ended = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"stderr": stderr[-3000:]}
    assert ended.get("ended") == "LeaseLost", ended
    assert sorted(out.glob("_journal/**/*.seg")) == []  # its segments went with it
    assert sorted(read_output(out).column("id").to_pylist()) == list(range(ROWS))
    verify = run_here(None, "verify", str(job), env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
