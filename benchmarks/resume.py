"""What a kill -9 costs: rows the server answers ÷ distinct texts the job needs, after repeated crashes.

    python -m benchmarks.resume                                   # both scenarios below, ~2 min
    python -m benchmarks.resume --scenario four-kills --seed 3    # one scenario, another set of kill moments
    python -m benchmarks.resume --src /tmp/base                   # the same, with batchembed from another tree
    python -m benchmarks.resume --throughput 100000 --repeat 3 [--src /tmp/base]   # no crash: rows/s
    python -m benchmarks.resume --memory [--src /tmp/base]       # peak RSS: resume of a 100k x 1024 shard

Scenarios (1024-dim vectors from ``benchmarks.server``, base64, default limits: concurrency 16,
256 inputs per request):

* ``four-kills``: 60,000 rows, ``shard_rows = 30000``, four ``kill -9`` at random moments, then a
  final run (issue #15's measurement);
* ``five-kills``: 100,000 rows, ``shard_rows = 20000``, five ``kill -9``, then a final run.

A kill lands once the server has answered a random number of new inputs (between ``--min-gap`` and
``--max-gap``) since the run started, so it falls at a random point of a shard. The ratio counts
every input the server answered, including requests still in flight when the client died. The
output is then checked (ids, 256 sampled vectors) and ``batchembed verify`` must pass. ``--src DIR``
puts DIR first on PYTHONPATH of the batchembed children (``git archive <commit> batchembed | tar -x
-C DIR`` gives an older version to compare with). Results are appended to ``benchmarks/resume.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import data
from benchmarks.common import (
    PY,
    SERVER_POOL,
    WORK,
    MeasuredChild,
    Server,
    batchembed_command,
    child_env,
    unlimited,
    write_job,
)
from benchmarks.run import check_output, run_batchembed
from benchmarks.server import make_pool

SCENARIOS = {
    "four-kills": {"rows": 60_000, "shard_rows": 30_000, "kills": 4},
    "five-kills": {"rows": 100_000, "shard_rows": 20_000, "kills": 5},
}
DIM = 1024


def _kill_after(cmd: list[str], env: dict[str, str], srv: Server, answered: int, log: Path) -> float:
    """Run ``cmd`` and SIGKILL it once the server has answered ``answered`` more inputs; seconds it ran."""
    start_inputs = srv.stats()["inputs"]
    child = MeasuredChild(cmd, log, env=env, append_log=True, poll=0.005)
    deadline = time.monotonic() + 600
    while child.running() and time.monotonic() < deadline:
        if srv.stats()["inputs"] - start_inputs >= answered:
            child.stop(signal.SIGKILL)
            break
    m = child.wait()
    if m.returncode != -signal.SIGKILL:
        raise RuntimeError(f"run ended by itself (exit {m.returncode}) before the kill; see {log}")
    return m.wall


def scenario(name: str, seed: int, src: str | None, min_gap: int, max_gap: int, concurrency: int, batch: int) -> dict:
    """Run one crash scenario; return its figures."""
    spec = SCENARIOS[name]
    rows, shard_rows, kills = spec["rows"], spec["shard_rows"], spec["kills"]
    input_path = data.dataset(rows)
    distinct = pc.count_distinct(pq.read_table(input_path, columns=["text"]).column("text")).as_py()
    out = WORK / "out" / f"resume-{name}"
    shutil.rmtree(out, ignore_errors=True)
    log = WORK / "logs" / f"resume-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    entry, _ = batchembed_command()
    env = child_env(src)
    rng = np.random.default_rng(seed)
    with Server(DIM) as srv:
        job = write_job(
            WORK / "jobs" / f"resume-{name}.toml",
            input_path=input_path,
            url=srv.url,
            out=out,
            limits=unlimited(concurrency, batch),
            shard_rows=shard_rows,
        )
        run = [*entry, "run", str(job), "--quiet"]
        srv.reset()
        gaps = [int(g) for g in rng.integers(min_gap, max_gap, size=kills)]
        killed_after = [round(_kill_after(run, env, srv, g, log), 2) for g in gaps]
        final = MeasuredChild(run, log, env=env, append_log=True).wait()
        answered = srv.stats()["inputs"]
    if final.returncode != 0:
        raise RuntimeError(f"final run exited {final.returncode}; see {log}")
    check = check_output(sorted(out.glob("part-*.parquet")), input_path, rows, make_pool(DIM, SERVER_POOL))
    verify = subprocess.run([*entry, "verify", str(job)], capture_output=True, env=env)
    report = json.loads((out / "_report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "scenario": name,
        "rows": rows,
        "shard_rows": shard_rows,
        "kills": kills,
        "seed": seed,
        "concurrency": concurrency,
        "batch_inputs": batch,
        "in_flight_rows": concurrency * batch,
        "src": src or "this tree",
        "distinct_texts": distinct,
        "kill_after_answered": gaps,
        "seconds_before_each_kill": killed_after,
        "final_run_seconds": round(final.wall, 2),
        "server_answered": answered,
        "ratio": round(answered / distinct, 4),
        "final_report_rows": report.get("rows"),
        "final_report_after_crash": report.get("after_crash"),
        "check": check,
        "verify": "ok" if verify.returncode == 0 else verify.stdout.decode()[-300:],
    }


def throughput(rows: int, repeat: int, src: str | None) -> dict:
    """rows/s of uninterrupted runs (``benchmarks.run``'s batchembed base64 measurement)."""
    pool = make_pool(DIM, SERVER_POOL)
    entry, _ = batchembed_command()
    with Server(DIM) as srv:
        results = [run_batchembed(srv, rows, "base64", pool, entry, 16, child_env(src)) for _ in range(repeat)]
    rates = [r.rows_per_second for r in results]
    return {
        "throughput_rows": rows,
        "src": src or "this tree",
        "rows_per_second": rates,
        "median": float(np.median(rates)),
        "cpu_seconds": [r.cpu_seconds for r in results],
        "check": [r.check for r in results],
    }


def memory(src: str | None, rows: int = 100_000, kill_after: int = 90_000) -> dict:
    """Peak RSS of a resume of one ``rows`` x 1024 shard killed after ``kill_after`` answers, beside the
    peak RSS of the same job run uninterrupted (issue 21 item 11: the resume should stay as flat)."""
    input_path = data.dataset(rows)
    out = WORK / "out" / "resume-memory"
    log = WORK / "logs" / "resume-memory.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    entry, _ = batchembed_command()
    env = child_env(src)
    with Server(DIM) as srv:
        job = write_job(
            WORK / "jobs" / "resume-memory.toml",
            input_path=input_path,
            url=srv.url,
            out=out,
            limits=unlimited(16, 256),
            shard_rows=rows,
        )
        run = [*entry, "run", str(job), "--quiet"]
        shutil.rmtree(out, ignore_errors=True)
        first = MeasuredChild(run, log, env=env, append_log=True).wait()
        shutil.rmtree(out, ignore_errors=True)
        srv.reset()
        _kill_after(run, env, srv, kill_after, log)
        final = MeasuredChild(run, log, env=env, append_log=True).wait()
    if first.returncode != 0 or final.returncode != 0:
        raise RuntimeError(f"a run failed ({first.returncode}, {final.returncode}); see {log}")
    report = json.loads((out / "_report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "memory_rows": rows,
        "shard_rows": rows,
        "killed_after_answered": kill_after,
        "src": src or "this tree",
        "uninterrupted_peak_rss_mb": round(first.peak_rss_mb, 1),
        "resume_peak_rss_mb": round(final.peak_rss_mb, 1),
        "resume_after_crash": report.get("after_crash"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-gap", type=int, default=3_000, help="fewest inputs answered before a kill")
    parser.add_argument("--max-gap", type=int, default=14_000, help="most inputs answered before a kill")
    parser.add_argument("--concurrency", type=int, default=16, help="limits.concurrency (default: the default)")
    parser.add_argument("--batch-inputs", type=int, default=256, help="limits.batch_inputs (default: the default)")
    parser.add_argument("--src", default=None, help="directory put first on the children's PYTHONPATH")
    parser.add_argument("--throughput", type=int, default=None, help="rows: measure uninterrupted rows/s instead")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="peak RSS of a resume of a 100k x 1024 shard")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "resume.json"))
    args = parser.parse_args(argv)
    print(f"python {PY}", file=sys.stderr)
    if args.memory:
        docs = [memory(args.src)]
    elif args.throughput:
        docs = [throughput(args.throughput, args.repeat, args.src)]
    else:
        names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
        docs = [
            scenario(n, args.seed, args.src, args.min_gap, args.max_gap, args.concurrency, args.batch_inputs)
            for n in names
        ]
    for doc in docs:
        print(json.dumps(doc), flush=True)
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(previous + docs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
