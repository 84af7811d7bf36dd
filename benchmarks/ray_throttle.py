"""The job-wide share of 429s with Ray workers against a server that announces no rate limit.

    python -m benchmarks.ray_throttle [--workers 3] [--rows 6000] [--limit 100] [--window 10]

A fake embeddings server on 127.0.0.1 (``batchembed.testing.FakeServer``) refuses more than
``--limit`` requests per ``--window`` seconds with a 429 that carries no header at all (style
``bare``: no rate-limit header, no ``Retry-After``); the job is configured at four times that rate, so what keeps the
429s down is what the workers learn from the 429s alone. ``batchembed run --engine ray --workers N``
runs as a child process on a local Ray it starts. Prints requests, 429s, their share, and the rows
the output holds; writes ``benchmarks/results-ray-throttle.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchembed.testing import FakeServer  # noqa: E402
from tests.conftest import cli_env, make_texts, read_output, write_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--limit", type=int, default=100, help="requests the server accepts per window")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--engine", default="ray", choices=["ray", "local"], help="local: one process, for comparison")
    args = parser.parse_args(argv)
    per_minute = int(args.limit * 60 / args.window)
    with tempfile.TemporaryDirectory() as tmp, FakeServer(dim=16) as srv:
        tmp_path = Path(tmp)
        texts = make_texts(args.rows, seed=1)
        pq.write_table(pa.table({"id": pa.array(range(args.rows), pa.int64()), "text": texts}), tmp_path / "in.parquet")
        job = write_job(
            tmp_path / "job.toml",
            {
                "input": {"path": str(tmp_path / "in.parquet"), "text": "text", "id": "id"},
                "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake", "timeout": 10.0},
                "limits": {
                    "batch_inputs": 10,
                    "concurrency": 4,
                    "max_retries": 20,
                    "requests_per_minute": 4 * per_minute,
                },
                "output": {"path": str(tmp_path / "out"), "shard_rows": 500},
            },
        )
        srv.rate_limit(rpm=args.limit, window=args.window, style="bare")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "batchembed.cli", "run", str(job), "--quiet", "--engine", args.engine]
            + (["--workers", str(args.workers)] if args.engine == "ray" else []),
            capture_output=True,
            text=True,
            env=cli_env(RAY_AUTH_MODE="disabled"),
            cwd=ROOT,
            timeout=900,
        )
        wall = time.monotonic() - started
        statuses = [r.status for r in srv.requests]
        throttled = sum(1 for s in statuses if s == 429)
        rows = read_output(tmp_path / "out").num_rows if result.returncode == 0 else 0
        first = min((r.received_at for r in srv.requests), default=0.0)
        by_10s: dict[int, int] = {}
        for r in srv.requests:
            if r.status == 429:
                slot = int((r.received_at - first) // 10) * 10
                by_10s[slot] = by_10s.get(slot, 0) + 1
        figures = {
            "engine": args.engine,
            "workers": args.workers if args.engine == "ray" else 1,
            "server_limit_per_minute": per_minute,
            "configured_per_minute": 4 * per_minute,
            "requests": len(statuses),
            "throttled": throttled,
            "throttled_share": round(throttled / max(1, len(statuses)), 4),
            "rows_out": rows,
            "exit": result.returncode,
            "wall_seconds": round(wall, 1),
            "throttled_by_10s": {f"{k}s": v for k, v in sorted(by_10s.items())},
        }
    print(json.dumps(figures, indent=1))
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    (ROOT / "benchmarks" / f"results-ray-throttle-{args.engine}.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
