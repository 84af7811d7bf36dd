"""Rows per second of the embedded local model: a plain run vs ``--engine ray`` with 1 and 2 workers.

    python -m benchmarks.scale_out [--rows 6000]

The same job (the shipped sample data, ``provider = "local"``, 8 shards) is run from scratch
(``--restart``) as child processes: ``batchembed run`` (all cores in one process), the same with
one onnxruntime thread (what one Ray worker gets: the difference to "ray, 1 worker" is Ray's cost), then
``--engine ray --workers 1`` and ``--workers 2`` (one CPU and one onnxruntime thread per worker, a
local Ray started by the run). Wall time counts everything from spawn to exit, Ray's start-up
included, so the figures include Ray's fixed cost of a few seconds per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_job(tmp: Path, rows: int) -> Path:
    """The sample data (two Parquet files) and a local-model job over it, in 8 shards."""
    data = tmp / "data"
    subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "make_sample.py"), "--out", str(data), "--rows", str(rows)], check=True
    )
    job = tmp / "job.toml"
    job.write_text(
        f"""[input]
path = "{data}"
text = "{{title}}\\n\\n{{body}}"
id = "id"

[model]
provider = "local"

[limits]
concurrency = 2
batch_inputs = 256

[output]
path = "{tmp / "out"}"
shard_rows = {max(250, rows // 8)}
"""
    )
    return job


def timed(job: Path, *extra: str) -> dict:
    """Run the job from scratch; wall seconds and rows per wall second."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "batchembed.cli", "run", str(job), "--quiet", "--restart", *extra],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    report = json.loads((job.parent / "out" / "_report.json").read_text())
    rows = report["rows"]["embedded"]
    return {"wall_s": round(wall, 1), "rows": rows, "rows_per_s_wall": round(rows / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = make_job(Path(tmp), args.rows)
        runs = {
            "plain run": timed(job),
            "plain, 1 thread": timed(job, "--set", "model.threads=1"),
            "ray, 1 worker": timed(job, "--engine", "ray", "--workers", "1"),
            "ray, 2 workers": timed(job, "--engine", "ray", "--workers", "2"),
        }
    for name, r in runs.items():
        line = f"{name:16s} {r['rows']:,} rows in {r['wall_s']:6.1f} s wall = {r['rows_per_s_wall']:6.1f} rows/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
