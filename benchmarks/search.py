"""What ``batchembed search`` costs on a big table: 1M rows x 384 dims, side by side with a peer and a ceiling.

    python -m benchmarks.search [--rows 1000000] [--dim 384] [--files 10] [--k 10] [--repeat 3]

Writes ``--files`` shards of random unit vectors (ids, a kept ``grp`` column with ten values, a
``fixed_size_list<float32>`` vector column; batchembed's own ``ShardWriter``), publishes them as the
output's Delta table and saves a manifest recording the local model's settings, as a run would. Then,
each in a fresh process (wall time and peak RSS from outside, ``--repeat`` times, median):

* ``batchembed``: what ``batchembed search`` does after parsing its arguments: the query text embedded by
  the local model (the model loaded, as the command loads it), the Delta version scanned for the 10
  nearest rows (``search.scan.nearest``), and again with ``--where "grp = 'g3'"``;
* ``duckdb`` (the peer, the README's recipe): ``array_cosine_similarity`` over ``read_parquet`` of the
  ``part-*`` files, ``ORDER BY score DESC LIMIT k``, for the same query vector;
* ``numpy`` (the ceiling, all in memory): the vector column read whole into one float32 matrix, then one
  matrix-vector product and ``argpartition``; its load and its scoring timed apart.

Wall times on a shared machine follow its load; ``cpu_s`` (the child's user + system CPU) does not.

Results on stdout and in ``benchmarks/results-search.json``. The three must agree on the ids found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import HERE, ROOT

sys.path.insert(0, str(ROOT))

from batchembed.fs.location import locate
from batchembed.job.config import InputConfig, JobConfig, ModelConfig, OutputConfig
from batchembed.output.manifest import Manifest
from batchembed.output.publish import publish, read_table_file
from batchembed.output.shard_writer import ShardWriter, vector_array
from batchembed.output.store import open_store
from batchembed.search.query_vector import query_job

QUERY = "how do I read a CSV file with a header row"


def job_for(out: Path) -> JobConfig:
    """The job whose output the benchmark fakes: the local model, ``grp`` kept."""
    return JobConfig(
        input=InputConfig(path=str(out), text="text", id="id", keep=("grp",)),
        model=ModelConfig(provider="local"),
        output=OutputConfig(path=str(out)),
    )


def build(out: Path, rows: int, dim: int, files: int) -> None:
    """The shards, their Delta table and a manifest holding the local model's fingerprint."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    schema = pa.schema([("id", pa.int64()), ("grp", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
    per = rows // files
    names = []
    for i in range(files):
        name = f"part-{i:05d}-bench.parquet"
        writer = ShardWriter(out, name, schema)
        for start in range(0, per, 50_000):
            n = min(50_000, per - start)
            vectors = rng.standard_normal((n, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = np.arange(i * per + start, i * per + start + n)
            writer.write(
                pa.table(
                    {
                        "id": pa.array(ids, pa.int64()),
                        "grp": pa.array([f"g{j % 10}" for j in ids], pa.string()),
                        "embedding": vector_array(vectors),
                    }
                )
            )
        writer.commit()
        names.append(name)
    where = locate(str(out))
    publish(where, None, [read_table_file(where, n) for n in names], tag=1, metadata={"bench": True})
    job = job_for(out)
    Manifest(fingerprint=query_job(job).fingerprint()).save(open_store(job))


# --------------------------------------------------------------------------------- the measured child


def child(mode: str, out: str, k: int, dim: int) -> None:
    """One measured run; prints a JSON line of timings and the ids found."""
    began = time.perf_counter()
    result: dict = {"mode": mode}
    if mode == "batchembed":  # each mode imports only what it uses: the peak RSS is its own
        from batchembed.search.query import query_for
        from batchembed.search.scan import nearest, open_table

        job = job_for(Path(out))
        table = open_table(job)
        vector = query_for(job, QUERY, table)
        result["query_s"] = time.perf_counter() - began
        t = time.perf_counter()
        hits = nearest(table, vector, k)
        result["scan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        where = nearest(table, vector, k, table.filter_for("grp = 'g3'"))
        result["scan_where_s"] = time.perf_counter() - t
        result["ids"] = hits.column("id").to_pylist()
        result["where_ok"] = set(where.column("grp").to_pylist()) == {"g3"}
        np.save(Path(out).parent / "query.npy", vector)
    else:
        vector = np.load(Path(out).parent / "query.npy")
        if mode == "duckdb":
            import duckdb

            con = duckdb.connect()
            rows = con.execute(
                f"SELECT id, array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) AS score "
                f"FROM read_parquet('{out}/part-*.parquet') ORDER BY score DESC LIMIT {k}",
                [vector.tolist()],
            ).fetchall()
            result["scan_s"] = time.perf_counter() - began
            result["ids"] = [r[0] for r in rows]
        else:  # numpy: the ceiling, everything in memory
            import pyarrow.dataset as ds

            table = ds.dataset(out, format="parquet").to_table(columns=["id", "embedding"])
            matrix = table.column("embedding").combine_chunks().values.to_numpy().reshape(-1, dim)
            ids = table.column("id").to_numpy()
            result["load_s"] = time.perf_counter() - began
            t = time.perf_counter()
            scores = matrix @ vector
            top = np.argpartition(-scores, k)[:k]
            top = top[np.argsort(-scores[top])]
            result["scan_s"] = time.perf_counter() - t
            result["ids"] = ids[top].tolist()
    result["total_s"] = time.perf_counter() - began
    print(json.dumps(result), flush=True)


def measured(mode: str, out: Path, k: int, dim: int) -> dict:
    """Run ``child`` in a fresh process; its result with its peak RSS (MB, from wait4)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.search",
            "--child",
            mode,
            "--out",
            str(out),
            "--k",
            str(k),
            "--dim",
            str(dim),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    line = proc.stdout.read().strip().splitlines()[-1] if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} failed")
    result = json.loads(line)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)  # the process's own work, whatever the load
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.out, args.k, args.dim)
        return 0
    work = Path(tempfile.mkdtemp(prefix="batchembed-search-bench-"))
    try:
        out = work / "out"
        t = time.perf_counter()
        build(out, args.rows, args.dim, args.files)
        size = sum(p.stat().st_size for p in out.glob("part-*.parquet")) / 1e6
        print(f"table: {args.rows:,} rows x {args.dim} dims in {args.files} files, {size:,.0f} MB "
              f"(built in {time.perf_counter() - t:.0f} s)")  # fmt: skip
        runs: dict[str, list[dict]] = {"batchembed": [], "duckdb": [], "numpy": []}
        for _ in range(args.repeat):
            for mode in runs:  # batchembed first: it saves the query vector the others use
                runs[mode].append(measured(mode, out, args.k, args.dim))
        summary = {}
        for mode, results in runs.items():
            keys = [k for k in results[0] if k.endswith("_s") or k == "peak_rss_mb"]  # wall, CPU and memory
            summary[mode] = {k: round(statistics.median(r[k] for r in results), 2) for k in keys}
            summary[mode]["ids_agree"] = all(r["ids"] == runs["numpy"][i]["ids"] for i, r in enumerate(results))
            print(f"{mode:11} " + "  ".join(f"{k} {v}" for k, v in summary[mode].items()))
        summary["where_ok"] = all(r["where_ok"] for r in runs["batchembed"])
        doc = {"rows": args.rows, "dim": args.dim, "files": args.files, "k": args.k, "runs": runs, "median": summary}
        (HERE / "results-search.json").write_text(json.dumps(doc, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
