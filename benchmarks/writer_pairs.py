"""Two writers of one output started at the same moment, locally and on S3: who runs, who is refused.

    python -m benchmarks.writer_pairs [--rows 1200] [--stores local,s3] [--ray]

For each pair of writers (a whole run, ``--restart``, ``--shard I/N`` parts, with ``--ray`` a Ray
driver) two ``batchembed run`` processes are started together on a fresh output (a fake embeddings
server on 127.0.0.1; S3 is moto's server). Then whatever the output still needs is run (the missing
parts of the split that won, or a whole run) and ``batchembed verify`` checks it. Prints one line
per pair: each writer's exit code and first error line, and the verification.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchembed.testing import FakeServer  # noqa: E402
from tests.conftest import cli_env, make_texts, write_job  # noqa: E402
from tests.s3server import MotoServer  # noqa: E402

WRITERS = {
    "whole": [],
    "restart": ["--restart"],
    "part 0/2": ["--shard", "0/2"],
    "part 1/2": ["--shard", "1/2"],
    "part 0/3": ["--shard", "0/3"],
    "ray": ["--engine", "ray", "--workers", "2"],
}


def _run(job: Path, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "batchembed.cli", "run", str(job), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _outcome(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=600)
    if proc.returncode == 0:
        return "nothing to do (exit 0)" if "nothing to do" in err else "runs (exit 0)"
    first = next((line for line in err.splitlines() if "error" in line), err.strip()[-160:])
    return f"refused (exit {proc.returncode}): {first.split('error: ', 1)[-1][:110]}"


def _finish(job: Path, env: dict, manifests: list[str]) -> None:
    """Run what the output still needs: the missing parts of its split, or a whole run."""
    split = sorted({int(m.split("-of-")[1][:4]) for m in manifests if "-of-" in m})
    if split:
        count = split[0]
        for index in range(count):
            subprocess.run(
                [sys.executable, "-m", "batchembed.cli", "run", str(job), "--quiet", "--shard", f"{index}/{count}"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                timeout=600,
            )
    else:
        subprocess.run(
            [sys.executable, "-m", "batchembed.cli", "run", str(job), "--quiet"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=600,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--ray", action="store_true", help="also pairs with a Ray driver (slow: Ray starts per run)")
    args = parser.parse_args(argv)
    kinds = [k for k in WRITERS if args.ray or k != "ray"]
    pairs = [(a, b) for i, a in enumerate(kinds) for b in kinds[i:]]
    rows = []
    s3 = MotoServer().start() if "s3" in args.stores else None
    try:
        with tempfile.TemporaryDirectory() as tmp, FakeServer(dim=16) as srv:
            tmp_path = Path(tmp)
            texts = make_texts(args.rows, seed=4)
            table = pa.table({"id": pa.array(range(args.rows), pa.int64()), "text": texts})
            pq.write_table(table, tmp_path / "in.parquet")
            for store in args.stores.split(","):
                for n, (a, b) in enumerate(pairs):
                    env = cli_env(RAY_AUTH_MODE="disabled", **(s3.env() if store == "s3" else {}))
                    out = f"s3://{s3.new_bucket()}/out" if store == "s3" else str(tmp_path / f"out-{n}")
                    job = write_job(
                        tmp_path / f"job-{store}-{n}.toml",
                        {
                            "input": {"path": str(tmp_path / "in.parquet"), "text": "text", "id": "id"},
                            "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake"},
                            "limits": {"batch_inputs": 20, "concurrency": 4},
                            "output": {"path": out, "shard_rows": 200},
                        },
                    )
                    procs = [_run(job, WRITERS[a], env), _run(job, WRITERS[b], env)]  # together
                    outcomes = [_outcome(p) for p in procs]
                    if store == "s3":
                        bucket = out.split("/")[2]
                        names = [k.split("/", 1)[1] for k in s3.keys(bucket, "out/")]
                    else:
                        names = [p.name for p in Path(out).iterdir()] if Path(out).exists() else []
                    _finish(job, env, [m for m in names if m.startswith("_manifest")])
                    verify = subprocess.run(
                        [sys.executable, "-m", "batchembed.cli", "verify", str(job)],
                        env=env,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    row = {"store": store, "first": a, "second": b, "outcomes": outcomes, "verify": verify.returncode}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if s3 is not None:
            s3.stop()
    print("\n| store | writers started together | first | second | verify after finishing |")
    print("|---|---|---|---|---|")
    for r in rows:
        first, second = (o.split(":")[0] for o in r["outcomes"])
        verdict = "OK" if r["verify"] == 0 else f"FAILED ({r['verify']})"
        print(f"| {r['store']} | {r['first']} + {r['second']} | {first} | {second} | {verdict} |")
    return 0 if all(r["verify"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
