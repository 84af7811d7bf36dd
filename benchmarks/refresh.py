"""The daily case: a table that changes 2% a day plus a new partition; what the refresh costs.

    python -m benchmarks.refresh                      # 1,000,000 rows in 50 daily files, ~6 min
    python -m benchmarks.refresh --rows 200000        # smaller
    python -m benchmarks.refresh --shard 3            # every run as --shard 0/3 .. 2/3, the parts together

A first run embeds ``--rows`` rows spread over ``--files`` Parquet files (one per "day") against
``benchmarks.server`` enforcing a realistic rate limit (``--tpm`` tokens/min, ``--rpm`` requests/min;
the job is told the same limits). Then day two: ``--changed`` of the rows (2%) get a new text, spread
over a few files (rewritten, rows reordered), and one new file of ``--new-rows`` rows is added. The
refresh runs with the same command. Reported: tokens and wall time of each run, the refresh's
tokens as a share of the first run's, rows sent ÷ distinct texts not already in the output (goal
≤ 1.05), and the output checked (ids, sampled vectors, ``batchembed verify``). Then a no-change rerun:
its wall time and that it sent nothing. Results are appended to ``benchmarks/refresh.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.common import PY, WORK, Server, batchembed_command, child_env, run_measured, write_job
from benchmarks.data import make_texts

DIM = 256


def _write_days(root: Path, texts: list[str], files: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // files)
    paths = []
    for f in range(files):
        lo, hi = f * per, min(len(texts), (f + 1) * per)
        path = root / f"day-{f:03d}.parquet"
        pq.write_table(pa.table({"id": pa.array(np.arange(lo, hi)), "text": texts[lo:hi]}), path, row_group_size=50_000)
        paths.append(path)
    return paths


def _change(paths: list[Path], changed: int, rng: np.random.Generator) -> set[str]:
    """Give ``changed`` rows of a few files a new text (rows reordered); return the new texts."""
    victims = rng.choice(len(paths), size=min(5, len(paths)), replace=False)
    per_file = -(-changed // len(victims))
    fresh: set[str] = set()
    for v in victims:
        table = pq.read_table(paths[v])
        texts = table.column("text").to_pylist()
        picks = rng.choice(len(texts), size=min(per_file, len(texts)), replace=False)
        for p in picks:
            texts[p] = f"day two edit {v}-{p}: " + texts[p]
            fresh.add(texts[p])
        order = rng.permutation(len(texts))
        ids = table.column("id").to_numpy()[order]
        pq.write_table(pa.table({"id": ids, "text": [texts[i] for i in order]}), paths[v], row_group_size=50_000)
    return fresh


def _run(cmd: list[str], job: Path, log: Path, env: dict, parts: int = 0) -> dict:
    """One run of the job (``parts``: its ``--shard 0/N .. N-1/N`` parts, together, as N processes)."""
    load = os.getloadavg()[0]
    if parts:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*cmd, "run", str(job), "--quiet", "--shard", f"{i}/{parts}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(log.with_suffix(f".part{i}.log"), "w"),  # noqa: SIM115 - closed with the process
            )
            for i in range(parts)
        ]
        codes = [p.wait(timeout=3600) for p in procs]
        if any(codes):
            raise RuntimeError(f"a part failed ({codes}); see {log.parent}")
        wall = time.perf_counter() - started
        return {"wall_s": round(wall, 2), "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}
    m = run_measured([*cmd, "run", str(job), "--quiet"], log, timeout=3600, env=env)
    if m.returncode != 0:
        raise RuntimeError(f"run failed ({m.returncode}); see {log}")
    return {
        "wall_s": round(m.wall, 2),
        "cpu_s": round(m.cpu, 2),
        "peak_rss_mb": round(m.peak_rss_mb),
        "load_before": round(load, 1),
        "load_after": round(os.getloadavg()[0], 1),
    }


def _table_exact(out: Path, rows: int) -> dict:
    """The Delta table's ids: how many rows, how many distinct (every id once: both equal ``rows``)."""
    from deltalake import DeltaTable  # (heavy: only when the benchmark checks the table)

    ids = ds.dataset(DeltaTable(str(out)).file_uris(), format="parquet").to_table(columns=["id"]).column("id")
    return {"rows": len(ids), "distinct_ids": pc.count_distinct(ids).as_py(), "expected": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--changed", type=float, default=0.02, help="share of rows whose text changes")
    ap.add_argument("--new-rows", type=int, default=None, help="rows of the new partition (default: rows/files)")
    ap.add_argument("--tpm", type=int, default=20_000_000)
    ap.add_argument("--rpm", type=int, default=6_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shard", type=int, default=0, metavar="N", help="run every run as --shard 0/N .. N-1/N, together")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    work = WORK / "refresh"
    shutil.rmtree(work, ignore_errors=True)
    new_rows = args.new_rows or args.rows // args.files
    texts = make_texts(args.rows + new_rows)
    paths = _write_days(work / "data", texts[: args.rows], args.files)
    cmd, _ = batchembed_command()
    env = child_env(None)
    limits = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm, "concurrency": 16, "batch_inputs": 256}
    result: dict = {"rows": args.rows, "files": args.files, "tpm": args.tpm, "rpm": args.rpm, "shard": args.shard}
    parts = args.shard
    with Server(DIM, rpm=args.rpm, tpm=args.tpm) as srv:
        job = write_job(work / "job.toml", input_path=work / "data" / "*.parquet", url=srv.url, out=work / "out",
                        limits=limits, shard_rows=100_000)  # fmt: skip
        first = _run(cmd, job, work / "first.log", env, parts)
        first["tokens"] = srv.stats()["tokens_accepted"]
        first["inputs"] = srv.stats()["inputs"]
        result["first"] = first
        print(f"first run: {first}")

        fresh = _change(paths, int(args.rows * args.changed), rng)
        lo = args.rows
        pq.write_table(
            pa.table({"id": pa.array(np.arange(lo, lo + new_rows)), "text": texts[lo : lo + new_rows]}),
            work / "data" / f"day-{args.files:03d}.parquet",
        )
        needed = len(fresh | set(texts[lo : lo + new_rows]))
        srv.reset()
        refresh = _run(cmd, job, work / "refresh.log", env, parts)
        stats = srv.stats()
        refresh["tokens"], refresh["inputs"] = stats["tokens_accepted"], stats["inputs"]
        refresh["tokens_vs_first"] = round(refresh["tokens"] / first["tokens"], 4)
        refresh["rows_sent_per_needed_text"] = round(refresh["inputs"] / needed, 4)
        refresh["wall_vs_first"] = round(refresh["wall_s"] / first["wall_s"], 4)
        refresh["texts_needed"] = needed
        result["refresh"] = refresh
        print(f"refresh: {refresh}")

        result["table"] = _table_exact(work / "out", args.rows + new_rows)
        print(f"table: {result['table']}")
        srv.reset()
        started = time.perf_counter()
        noop = _run(cmd, job, work / "noop.log", env, parts)
        result["no_change"] = {
            "wall_s": round(time.perf_counter() - started, 2),
            "exit": 0,
            "requests": srv.stats()["requests"],
        }
        del noop
        print(f"no-change rerun: {result['no_change']}")
    verify = subprocess.run([*cmd, "verify", str(job)], env=env, capture_output=True, text=True)
    result["verify"] = verify.returncode == 0
    print(f"verify: {'OK' if result['verify'] else verify.stdout[-2000:]}")
    reports = sorted((work / "out").glob("_report*.json"))
    result["report"] = {
        p.name: {k: json.loads(p.read_text()).get(k) for k in ("rows", "texts", "refresh", "tokens_for_current_rows")}
        for p in reports
    }
    out = Path(__file__).with_name("refresh.json")
    history = json.loads(out.read_text()) if out.exists() else []
    history.append({"when": time.strftime("%Y-%m-%d %H:%M"), "python": PY, **result})
    out.write_text(json.dumps(history, indent=1) + "\n")


if __name__ == "__main__":
    main()
