"""JSON Lines (plain and compressed) against the same rows in Parquet: rows/s and peak memory.

    python -m benchmarks.inputs [--rows 1000000] [--dim 256] [--json PATH]

The rows are ``benchmarks.data``'s (``id``, ``text``; ~450 bytes a row). Each input is measured twice,
each time in its own child process (wall time spawn to exit, peak RSS from ``VmHWM``):

* **read**: ``sources.iter_batches`` over the whole file (``id`` and ``text``), nothing else: what
  the reader itself costs;
* **run**: a whole ``batchembed run`` against the benchmark server (``benchmarks.server``, no limits)
  at ``--dim`` dimensions: what a user sees.

Goal: JSON Lines, gzipped or not, within reach of Parquet's run rows/s, with peak memory that does
not grow with the file (streamed: never decompressed whole, in memory or on disk).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa

from benchmarks import data
from benchmarks.common import PY, Server, batchembed_command, run_measured, unlimited, write_job

WORK = data.DATA_DIR / "inputs"

READ = """
import sys
from batchembed.input.discover import discover
from batchembed.input.read import iter_batches
rows = sum(b.num_rows for src in discover(sys.argv[1]) for b in iter_batches(src, ["id", "text"]))
print(rows)
"""


def write_inputs(rows: int) -> dict[str, Path]:
    """The same rows as .parquet, .jsonl, .jsonl.gz and .jsonl.zst (cached under benchmarks/.data/inputs)."""
    parquet = data.dataset(rows)
    base = WORK / str(rows)
    paths = {
        "parquet": parquet,
        "jsonl": base / "rows.jsonl",
        "jsonl.gz": base / "rows.jsonl.gz",
        "jsonl.zst": base / "rows.jsonl.zst",
    }
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        pl.scan_parquet(parquet).sink_ndjson(paths["jsonl"])
        with open(paths["jsonl"], "rb") as src, gzip.open(paths["jsonl.gz"], "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        with (
            pa.OSFile(str(paths["jsonl"]), "rb") as src,
            pa.CompressedOutputStream(str(paths["jsonl.zst"]), "zstd") as dst,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        (base / "done").write_text("")
    return paths


def read_only(name: str, path: Path, rows: int) -> dict:
    m = run_measured([PY, "-c", READ, str(path)], WORK / "logs" / f"read-{name}.log", timeout=900)
    if m.returncode != 0 or int(m.log.strip().splitlines()[-1]) != rows:
        raise RuntimeError(f"read {name}: exit {m.returncode}:\n{m.log[-2000:]}")
    return {"rows_per_s": round(rows / m.wall), "wall_s": round(m.wall, 1), "peak_rss_mb": round(m.peak_rss_mb)}


def whole_run(name: str, path: Path, rows: int, url: str) -> dict:
    out = WORK / "out" / name
    job = write_job(WORK / "jobs" / f"{name}.toml", input_path=path, url=url, out=out, limits=unlimited())
    cmd, _ = batchembed_command()
    m = run_measured([*cmd, "run", str(job), "--quiet", "--restart"], WORK / "logs" / f"run-{name}.log", timeout=1800)
    if m.returncode != 0:
        raise RuntimeError(f"run {name}: exit {m.returncode}:\n{m.log[-2000:]}")
    report = json.loads((out / "_report.json").read_text())
    assert report["rows"]["embedded"] == rows, report["rows"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "rows_per_s": round(rows / m.wall),
        "wall_s": round(m.wall, 1),
        "cpu_s": round(m.cpu, 1),
        "peak_rss_mb": round(m.peak_rss_mb),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    paths = write_inputs(args.rows)
    results = []
    with Server(dim=args.dim) as srv:
        for name, path in paths.items():
            r = {"input": name, "bytes": path.stat().st_size}
            r["read"] = read_only(name, path, args.rows)
            r["run"] = whole_run(name, path, args.rows, srv.url)
            results.append(r)
            print(
                f"inputs: {name:>10} ({r['bytes'] / 1e6:,.0f} MB): read {r['read']['rows_per_s']:,} rows/s, "
                f"peak {r['read']['peak_rss_mb']} MB | run {r['run']['rows_per_s']:,} rows/s, "
                f"{r['run']['cpu_s']} CPU s, peak {r['run']['peak_rss_mb']} MB",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "dim": args.dim, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
