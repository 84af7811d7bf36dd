"""The batch tier's memory on a large batch: peak RSS of a whole ``tier = "batch"`` run whose one batch
answers 50,000 texts with 1,536-dimension float vectors (an output file of about 1.5 GB of JSON).

A real ``batchembed run`` (subprocess, measured from outside: ``VmHWM``) against the fake batch API on
loopback (``batchembed.testing.batchapi.FakeBatchServer``, OpenAI's shape, floats). ``--before DIR``
runs a second tree's package too (e.g. ``git worktree add /tmp/before main``), side by side against
the same server and input, so the two numbers come from one run of this script.

    .venv/bin/python -m benchmarks.batch_results --rows 50000 --dim 1536 --before /tmp/before
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.testing.batchapi import FakeBatchServer
from benchmarks.common import batchembed_command, child_env, print_markdown, run_measured


def texts(rows: int) -> list[str]:
    """``rows`` distinct short texts (the batch's size is the vectors', not the texts')."""
    words = "alpha beta gamma delta river stone cloud quiet rapid green orange market data vector".split()
    return [f"doc {i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(4 + i % 6)) for i in range(rows)]


def measure(tmp: Path, srv: FakeBatchServer, inp: Path, label: str, src: str | None, dim: int) -> dict:
    out = tmp / f"out-{label}"
    job = tmp / f"job-{label}.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\ntext = "text"\nid = "id"\n'
        f'[model]\nprovider = "openai"\nbase_url = "{srv.url}"\nname = "text-embedding-3-small"\n'
        f'dimensions = {dim}\ntier = "batch"\nbatch_poll_seconds = 0\n'
        f'[limits]\nbatch_inputs = 512\n[output]\npath = "{out}"\n'
    )
    env = {k: v for k, v in child_env(src).items() if not k.endswith("_API_KEY")}
    env["OPENAI_API_KEY"] = "sk-bench"
    before = {f for f in srv.files}
    # the console script, not ``python -m`` (which would import the package in the working directory first)
    command, _ = batchembed_command()
    m = run_measured([*command, "run", str(job), "--quiet"], tmp / f"{label}.log", timeout=3600, env=env)
    if m.returncode != 0:
        raise SystemExit(f"{label}: run failed ({m.returncode}): {(tmp / f'{label}.log').read_text()[-2000:]}")
    results = [f for f in srv.files if f not in before and srv.files[f]["filename"] == "results.jsonl"]
    return {
        "package": label,
        "rows": pq.ParquetFile(inp).metadata.num_rows,
        "dim": dim,
        "output_file_mb": round(sum(srv.files[f]["bytes"] for f in results) / 2**20),
        "peak_rss_mb": round(m.peak_rss_mb),
        "seconds": round(m.wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--before", default=None, help="another tree whose batchembed package runs first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, FakeBatchServer(dim=args.dim) as srv:
        tmp = Path(name)
        inp = tmp / "in.parquet"
        pq.write_table(pa.table({"id": list(range(args.rows)), "text": texts(args.rows)}), inp)
        runs = []
        if args.before:
            runs.append(measure(tmp, srv, inp, "before", os.path.abspath(args.before), args.dim))
        runs.append(measure(tmp, srv, inp, "this tree", None, args.dim))
    print_markdown(runs)


if __name__ == "__main__":
    main()
