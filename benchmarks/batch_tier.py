"""The batch tier at 100k rows: what it buys, with no kill and with a SIGKILL at each step.

For each scenario a real ``batchembed run`` (subprocess) against the fake batch API on loopback
(``batchembed.testing.batchapi.FakeBatchServer``, OpenAI's shape) is killed at one failpoint
(``BATCHEMBED_FAILPOINT``), then run again to completion. Measured:

* inputs billed / distinct texts (goal 1.00; a text bought twice would show here),
* batches created / batches needed (ceil(distinct / 50,000); refused ones would count too),
* the price paid at the batch rate against the same tokens online (text-embedding-3-small, $0.02/1M),
* wall time of the two runs (the fake answers a batch within three polls; no waiting is measured).

    .venv/bin/python -m benchmarks.batch_tier --rows 100000 --distinct 90000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.run.batch.loop import FAILPOINTS as BATCH_FAILPOINTS
from batchembed.testing.batchapi import FakeBatchServer
from benchmarks.common import print_markdown

ROOT = Path(__file__).resolve().parents[1]
POINTS = [None, *BATCH_FAILPOINTS, "shard-before-manifest"]
PRICE = 0.02  # text-embedding-3-small, USD per 1M tokens (online)


def texts_for(rows: int, distinct: int) -> list[str]:
    """``rows`` texts of which ``distinct`` differ (the rest repeat earlier ones)."""
    words = "alpha beta gamma delta river stone cloud quiet rapid green orange market data vector".split()
    base = [
        f"doc {i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(5 + i % 20)) for i in range(distinct)
    ]
    return base + [base[(i * 31) % distinct] for i in range(rows - distinct)]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchembed.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )


def scenario(tmp: Path, texts: list[str], point: str | None) -> dict:
    inp = tmp / "in.parquet"
    if not inp.exists():
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), inp)
    out = tmp / f"out-{point or 'none'}"
    with FakeBatchServer(dim=32) as srv:
        srv.page_size = 20
        job = tmp / f"job-{point or 'none'}.toml"
        job.write_text(
            f'[input]\npath = "{inp}"\ntext = "text"\nid = "id"\n'
            f'[model]\nprovider = "openai"\nbase_url = "{srv.url}"\nname = "text-embedding-3-small"\n'
            'dimensions = 32\ntier = "batch"\nbatch_poll_seconds = 0\n'
            f'[output]\npath = "{out}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(PYTHONPATH=str(ROOT), OPENAI_API_KEY="sk-bench")
        started = time.monotonic()
        killed = None
        if point:
            killed = run(["run", str(job), "--quiet"], {**env, "BATCHEMBED_FAILPOINT": point}).returncode
        done = run(["run", str(job), "--quiet"], env)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{point}: run failed: {done.stderr[-2000:]}")
        verified = run(["verify", str(job)], env).returncode == 0
        report = json.loads((out / "_report.json").read_text())["batch"]
        distinct = len(set(texts))
        needed = -(-distinct // 50_000)
        return {
            "kill_at": point or "(no kill)",
            "killed_exit": killed,
            "billed_per_distinct": round(srv.inputs_billed / distinct, 4),
            "batches_created_per_needed": round(len(srv.created) / needed, 2),
            "tokens_billed": report["tokens_billed"],
            "cost_usd_batch": round(report["tokens_billed"] / 1e6 * PRICE * 0.5, 4),
            "cost_usd_online": round(report["tokens_billed"] / 1e6 * PRICE, 4),
            "verify_ok": verified,
            "seconds": round(elapsed, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=90_000)
    parser.add_argument("--points", nargs="*", default=None, help="failpoints to run (default: all)")
    args = parser.parse_args()
    texts = texts_for(args.rows, args.distinct)
    points = POINTS if args.points is None else [None if p == "none" else p for p in args.points]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [scenario(Path(tmp), texts, p) for p in points]
    print_markdown(rows)


if __name__ == "__main__":
    main()
