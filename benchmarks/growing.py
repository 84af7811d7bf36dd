"""One growing CSV export: what the refresh after a 1% append reads, against reading the file whole again.

    python -m benchmarks.growing                 # a 1 GB CSV (~2.2M rows), 1% appended; ~15-25 min
    python -m benchmarks.growing --mb 100        # smaller

Day one embeds the whole file against ``benchmarks.server`` (no rate limit, 16-dimensional vectors so
the output stays small). Then 1% more rows are appended to the file and the same job runs twice, on
two copies of the day-one output:

* **grown**: the output as this version writes it (its shards record where the file ended): the file
  is read from that byte on;
* **full read**: the same output with those records removed from its manifest, as an output written
  before them: the changed file is read again from its first byte (its texts are found in the output,
  so both buy the same new rows).

For each: wall time, CPU, the bytes the process read (``rchar`` of ``/proc/self/io``: every read, page
cache or disk) less those of a no-change rerun (start-up, manifest, output), the size of the output's
``id`` and ``_text_key`` columns (what a refresh reads of its own output: the kept rows' ids for the id
check, every text key to find texts already bought), and the rows the server was sent. Results are
appended to ``benchmarks/growing.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from benchmarks.common import PY, WORK, Server, child_env, run_measured, unlimited, write_job
from benchmarks.data import make_texts

#: Runs batchembed's CLI and prints what the process read (its /proc/self/io) as it exits.
RUNNER = (
    "import atexit, sys\n"
    "from batchembed import cli\n"
    "atexit.register(lambda: print('IO ' + open('/proc/self/io').read().replace(chr(10), ' '), file=sys.stderr))\n"
    "sys.exit(cli.main())\n"
)
ROW_BYTES = 460  # about what one CSV row of the benchmark's texts takes


def _write_csv(path: Path, texts: list[str], first: int, mode: str) -> None:
    with open(path, mode, encoding="utf-8", newline="") as fh:
        if mode == "w":
            fh.write("id,text\n")
        for i, text in enumerate(texts, start=first):
            fh.write(f'{i},"{text}"\n')


def _run(job: Path, log: Path) -> dict:
    m = run_measured([PY, "-c", RUNNER, "run", str(job), "--quiet"], log, timeout=7200, env=child_env(None))
    if m.returncode != 0:
        raise RuntimeError(f"run failed ({m.returncode}); see {log}")
    found = re.search(r"rchar: (\d+) wchar: \d+ syscr: \d+ syscw: \d+ read_bytes: (\d+)", m.log)
    return {
        "wall_s": round(m.wall, 2),
        "cpu_s": round(m.cpu, 2),
        "peak_rss_mb": round(m.peak_rss_mb),
        "rchar": int(found.group(1)) if found else None,
        "disk_read_bytes": int(found.group(2)) if found else None,
    }


def _strip_ends(out: Path) -> None:
    """The output as a version before ``ShardRecord.ends`` wrote it: no file's end recorded."""
    manifest = json.loads((out / "_manifest.json").read_text())
    for shard in manifest["shards"]:
        shard.pop("ends", None)
    from batchembed.job.fingerprint import fingerprint_hash

    manifest["fingerprint_sha256"] = fingerprint_hash(manifest["fingerprint"])
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _index_bytes(out: Path) -> int:
    """Bytes of the shards' ``id`` and ``_text_key`` columns: what a refresh reads of its own output (the ids
    of the rows it keeps, for the id check; every text key, to find texts already bought)."""
    import pyarrow.parquet as pq

    total = 0
    for shard in out.glob("part-*.parquet"):
        meta = pq.ParquetFile(shard).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += sum(
                group.column(c).total_compressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema in ("id", "_text_key")
            )
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1024, help="size of the day-one CSV in MB")
    ap.add_argument("--grow", type=float, default=0.01, help="share of rows appended on day two")
    args = ap.parse_args()

    rows = args.mb * 2**20 // ROW_BYTES
    extra = int(rows * args.grow)
    root = WORK / f"growing-{args.mb}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = make_texts(10_000)  # the benchmark's realistic texts, made unique by their row number (cheap)
    texts = [f"{i}: {base[i % len(base)]}" for i in range(rows + extra)]
    csv = root / "in" / "export.csv"
    csv.parent.mkdir()
    _write_csv(csv, texts[:rows], 0, "w")
    size = csv.stat().st_size
    print(f"day one: {rows:,} rows, {size / 2**20:,.0f} MB", flush=True)

    results: dict = {"mb": round(size / 2**20), "rows": rows, "appended_rows": extra, "when": time.ctime()}
    with Server(dim=16) as server:
        day1 = write_job(root / "day1.toml", input_path=csv, url=server.url, out=root / "grown", limits=unlimited())
        results["day_one"] = _run(day1, root / "day1.log")
        print(f"day one: {results['day_one']}", flush=True)
        shutil.copytree(root / "grown", root / "full")
        _strip_ends(root / "full")
        _write_csv(csv, texts[rows:], rows, "a")
        appended = csv.stat().st_size - size
        results["appended_bytes"] = appended
        for name in ("grown", "full"):
            job = write_job(root / f"{name}.toml", input_path=csv, url=server.url, out=root / name, limits=unlimited())
            server.reset()
            measured = _run(job, root / f"{name}.log")
            measured["rows_sent"] = server.stats().get("inputs")
            baseline = _run(job, root / f"{name}-again.log")  # nothing changed: start-up and output only
            measured["bytes_read"] = measured["rchar"] - baseline["rchar"]
            measured["of_which_output_index"] = _index_bytes(root / name)
            measured["no_change_rerun"] = baseline
            results["full read" if name == "full" else "grown"] = measured
            print(f"{name}: {measured}", flush=True)
    grown, full = results["grown"], results["full read"]
    print(
        f"\n1% appended to a {results['mb']:,} MB CSV ({appended / 2**20:,.1f} MB): "
        f"grown read {grown['bytes_read'] / 2**20:,.1f} MB in {grown['wall_s']} s; "
        f"the full read {full['bytes_read'] / 2**20:,.1f} MB in {full['wall_s']} s "
        f"(the output's ids and text keys: {grown['of_which_output_index'] / 2**20:,.1f} MB)"
    )
    log = Path(__file__).with_name("growing.json")
    history = json.loads(log.read_text()) if log.exists() else []
    log.write_text(json.dumps([*history, results], indent=1) + "\n")


if __name__ == "__main__":
    main()
