"""What a ``run --no-wait`` poll of the batch tier costs while its batches run: a real ``batchembed run
--no-wait`` (subprocess, measured from outside: wall time, CPU, ``VmHWM``) against the fake batch API on
loopback (``FakeBatchServer``, OpenAI's shape, its batches held running), after a first run planned and
submitted the job. The batch API calls each poll makes are counted by the fake.

``--before DIR`` runs a second tree's package too (e.g. ``git archive main | tar -x -C /tmp/before``),
on its own output against the same server and input, so both numbers come from one run of this script.

    .venv/bin/python -m benchmarks.batch_poll --rows 1000000 --before /tmp/before
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.testing.batchapi import FakeBatchServer
from benchmarks.batch_results import texts
from benchmarks.common import batchembed_command, child_env, print_markdown, run_measured


def poll_costs(tmp: Path, srv: FakeBatchServer, inp: Path, label: str, src: str | None, polls: int) -> dict:
    """Submit the job once (``--no-wait``), then poll it ``polls`` times; the last poll's costs."""
    out = tmp / f"out-{label}"
    job = tmp / f"job-{label}.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\ntext = "text"\nid = "id"\n'
        f'[model]\nprovider = "openai"\nbase_url = "{srv.url}"\nname = "text-embedding-3-small"\n'
        f'dimensions = 16\ntier = "batch"\nbatch_poll_seconds = 0\n[output]\npath = "{out}"\n'
    )
    env = {k: v for k, v in child_env(src).items() if not k.endswith("_API_KEY")}
    env["OPENAI_API_KEY"] = "sk-bench"
    command, _ = batchembed_command()  # the console script: ``python -m`` would import this tree's package first
    run = [*command, "run", str(job), "--quiet", "--no-wait"]
    first = run_measured(run, tmp / f"{label}-submit.log", timeout=3600, env=env)
    if first.returncode != 75:
        raise SystemExit(f"{label}: the first run ended {first.returncode}: {first.log}")
    for n in range(polls):
        before = len(srv.batch_calls)
        m = run_measured(run, tmp / f"{label}-poll{n}.log", timeout=3600, env=env)
        if m.returncode != 75:
            raise SystemExit(f"{label}: a poll ended {m.returncode}: {m.log}")
        calls = srv.batch_calls[before:]
    return {
        "package": label,
        "rows": pq.ParquetFile(inp).metadata.num_rows,
        "batches_open": sum(1 for c in calls if c[0] == "GET" and c[1].startswith("/batches/")),
        "submit_s": round(first.wall, 1),
        "poll_s": round(m.wall, 1),
        "poll_cpu_s": round(m.cpu, 1),
        "poll_peak_rss_mb": round(m.peak_rss_mb),
        "poll_batch_api_calls": len(calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--polls", type=int, default=2, help="polls after the submitting run (the last is shown)")
    parser.add_argument("--before", default=None, help="another tree whose batchembed package runs first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, FakeBatchServer(dim=16) as srv:
        srv.hold_batches = True  # the batches run for as long as the benchmark polls them
        tmp = Path(name)
        inp = tmp / "in.parquet"
        pq.write_table(pa.table({"id": list(range(args.rows)), "text": texts(args.rows)}), inp)
        runs = []
        if args.before:
            runs.append(poll_costs(tmp, srv, inp, "before", os.path.abspath(args.before), args.polls))
        runs.append(poll_costs(tmp, srv, inp, "this tree", None, args.polls))
    print_markdown(runs)


if __name__ == "__main__":
    main()
