"""Input and output on a local S3 server (moto) vs on local disk: the same job, rows/s and peak RSS.

    python -m benchmarks.object_store [--rows 100000] [--dim 1024] [--shard-rows 25000] [--repeat 2]

Starts ``benchmarks.server`` (the fast fake embeddings server) and ``moto_server`` on 127.0.0.1,
uploads the cached input (``benchmarks/.data/texts-<rows>.parquet``) to a bucket, then runs
``batchembed run JOB --quiet --restart`` alternately with input+output on local disk and with
input+output on S3 (reached only through ``AWS_ENDPOINT_URL`` and the other standard variables),
``--repeat`` times each. Each child is measured from outside as in ``benchmarks.run`` (wall time
spawn to exit, CPU, peak RSS from VmHWM); moto's own memory is not counted. Every output is
checked: row count and ids (and, for S3, that the prefix holds only the recorded shards and the
run's files). Results: a table on stdout and ``benchmarks/results-object-store.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from benchmarks import data
from benchmarks.common import (
    HERE,
    ROOT,
    WORK,
    Server,
    batchembed_command,
    child_env,
    run_measured,
    unlimited,
    write_job,
)

sys.path.insert(0, str(ROOT))

from tests.s3server import MotoServer


def check_local(out: Path, rows: int) -> str:
    files = sorted(out.glob("part-*.parquet"))
    ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    return "ok" if ids == list(range(rows)) else f"ids wrong ({len(ids)} rows)"


def check_s3(s3: MotoServer, bucket: str, rows: int) -> str:
    keys = s3.keys(bucket, "out/")
    manifest = json.loads(s3.get(bucket, "out/_manifest.json"))
    recorded = {f"out/{s['name']}" for s in manifest["shards"]}
    extra = set(keys) - recorded - {"out/_manifest.json", "out/_report.json", "out/_SUCCESS"}
    if extra:
        return f"stray objects: {sorted(extra)[:3]}"
    ids = []
    for key in sorted(recorded):
        ids += pq.read_table(io.BytesIO(s3.get(bucket, key)), columns=["id"]).column("id").to_pylist()
    return "ok" if ids == list(range(rows)) else f"ids wrong ({len(ids)} rows)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--split", action="store_true", help="also input-only and output-only on S3")
    parser.add_argument("--out", default=str(HERE / "results-object-store.json"))
    parser.add_argument(
        "--compare-src",
        help="a directory holding another batchembed package (e.g. main's): each run is also made with it, "
        "interleaved, labelled 'before'",
    )
    args = parser.parse_args(argv)

    input_path = data.dataset(args.rows)
    entry, _ = batchembed_command()
    s3 = MotoServer().start()
    os.environ.update(s3.env())  # the children inherit the standard AWS variables, nothing else
    results = []
    try:
        bucket = s3.new_bucket()
        s3.client.upload_file(str(input_path), bucket, "in/texts.parquet")
        with Server(args.dim) as srv:
            jobs = {
                "local disk": (str(input_path), str(WORK / "out" / "object-store-local")),
                "S3 (moto)": (f"s3://{bucket}/in/texts.parquet", f"s3://{bucket}/out"),
            }
            if args.split:
                jobs["S3 in only"] = (f"s3://{bucket}/in/texts.parquet", str(WORK / "out" / "object-store-local"))
                jobs["S3 out only"] = (str(input_path), f"s3://{bucket}/out")
            moto = psutil.Process(s3.proc.pid)
            variants = [("", None)] + ([(" before", args.compare_src)] if args.compare_src else [])
            for i in range(args.repeat):
                for (name, (src, out)), (label, code) in ((j, v) for j in jobs.items() for v in variants):
                    job = write_job(
                        WORK / "jobs" / f"object-store-{name.split()[0].lower()}.toml",
                        input_path=src,
                        url=srv.url,
                        out=out,
                        limits=unlimited(),
                        shard_rows=args.shard_rows,
                    )
                    moto_cpu0 = sum(moto.cpu_times()[:2])
                    m = run_measured(
                        [*entry, "run", str(job), "--quiet", "--restart"],
                        WORK / "logs" / f"object-store-{name.split()[0].lower()}-{i}.log",
                        timeout=600,
                        env=child_env(code),
                    )
                    moto_cpu = sum(moto.cpu_times()[:2]) - moto_cpu0
                    if m.returncode != 0:
                        check = f"exit {m.returncode}: {m.log[-300:]}"
                    elif not out.startswith("s3://"):
                        check = check_local(Path(out), args.rows)
                    else:
                        check = check_s3(s3, bucket, args.rows)
                    results.append(
                        {
                            "store": name + label,
                            "run": i + 1,
                            "rows": args.rows,
                            "wall_s": round(m.wall, 2),
                            "rows_per_s": round(args.rows / m.wall),
                            "cpu_s": round(m.cpu, 1),
                            "peak_rss_mb": round(m.peak_rss_mb),
                            "moto_cpu_s": round(moto_cpu, 1),
                            "check": check,
                        }
                    )
                    print(json.dumps(results[-1]), flush=True)
            shutil.rmtree(WORK / "out" / "object-store-local", ignore_errors=True)
    finally:
        s3.stop()
    speeds: dict[str, list[int]] = {}
    for r in results:
        if r["check"] == "ok":
            speeds.setdefault(r["store"], []).append(r["rows_per_s"])
    median = {k: statistics.median(v) for k, v in speeds.items()}
    ratio = median.get("S3 (moto)", 0) / median["local disk"] if median.get("local disk") else None
    head = f"{'store':<19} {'run':>3} {'rows/s':>8} {'wall s':>7} {'CPU s':>6} {'moto CPU s':>10} {'peak RSS MB':>12}"
    print(f"\n{head}  check")
    for r in results:
        print(
            f"{r['store']:<19} {r['run']:>3} {r['rows_per_s']:>8,} {r['wall_s']:>7.1f} {r['cpu_s']:>6.1f} "
            f"{r['moto_cpu_s']:>10.1f} {r['peak_rss_mb']:>12,}  {r['check']}"
        )
    if ratio is not None:
        print(f"\nS3 / local disk rows/s (median of {args.repeat}): {ratio:.0%}")
    doc = {
        "rows": args.rows,
        "dim": args.dim,
        "shard_rows": args.shard_rows,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
        "median_rows_per_s": median,
        "s3_vs_local": ratio,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r["check"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
