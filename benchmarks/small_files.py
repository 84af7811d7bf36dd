"""Many small files vs one file: the same rows, the same server, rows/s of a whole ``batchembed run``.

    python -m benchmarks.small_files [--files 2000] [--rows-per-file 10] [--format parquet|csv|jsonl]

Both inputs hold the same rows (the first files x rows-per-file rows of ``benchmarks.data``): once
as one file, once split into ``--files`` files. Goal: the many-files run reaches >= 80% of the
one-file run's rows/s. Prints one line per run and the ratio; ``--json PATH`` saves them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks import data
from benchmarks.common import Server, batchembed_command, run_measured, write_job

WORK = data.DATA_DIR / "small-files"


def write_inputs(files: int, rows_per_file: int, fmt: str) -> tuple[Path, Path]:
    """(one file, a directory of ``files`` files) holding the same rows."""
    rows = files * rows_per_file
    table = pq.read_table(data.dataset(rows)).slice(0, rows)
    base = WORK / f"{fmt}-{files}x{rows_per_file}"
    one, many = base / "one", base / "many"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        one.mkdir(parents=True)
        many.mkdir(parents=True)
        write = {
            "parquet": pq.write_table,
            "csv": pacsv.write_csv,
            "jsonl": lambda table, path: pl.from_arrow(table).write_ndjson(path),
        }[fmt]
        write(table, one / f"all.{fmt}")
        for i in range(files):
            write(table.slice(i * rows_per_file, rows_per_file), many / f"part-{i:05d}.{fmt}")
        (base / "done").write_text("")
    return one, many


def run_one(name: str, input_path: Path, url: str, rows: int) -> dict:
    out = WORK / "out" / name
    limits = {"concurrency": 16, "batch_inputs": 256}  # the default rate limits
    job = write_job(
        WORK / "jobs" / f"{name}.toml", input_path=input_path, url=url, out=out, limits=limits, encoding="auto"
    )
    cmd, _ = batchembed_command()
    m = run_measured([*cmd, "run", str(job), "--quiet", "--restart"], WORK / "logs" / f"{name}.log", timeout=600)
    if m.returncode != 0:
        raise RuntimeError(f"{name}: batchembed exited {m.returncode}:\n{m.log[-2000:]}")
    shards = len(list(out.glob("part-*.parquet")))
    manifest = (out / "_manifest.json").stat().st_size
    return {
        "run": name,
        "rows": rows,
        "wall_s": round(m.wall, 2),
        "rows_per_s": round(rows / m.wall),
        "shards": shards,
        "manifest_bytes": manifest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rows-per-file", type=int, default=10)
    parser.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = args.files * args.rows_per_file
    one, many = write_inputs(args.files, args.rows_per_file, args.format)
    results = []
    with Server(dim=1024) as srv:
        for name, path in (("one-file", one), (f"{args.files}-files", many)):
            r = run_one(f"{args.format}-{name}", path, srv.url, rows)
            results.append(r)
            print(
                f"small files ({args.format}): {r['run']:>22}: {r['rows']:,} rows in {r['wall_s']:.1f}s = "
                f"{r['rows_per_s']:,} rows/s, {r['shards']} shards, manifest {r['manifest_bytes']:,} bytes",
                flush=True,
            )
    ratio = results[1]["rows_per_s"] / results[0]["rows_per_s"]
    print(f"small files ({args.format}): {args.files} files reach {ratio:.0%} of the one-file rows/s (goal >= 80%)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
