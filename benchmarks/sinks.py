"""Sinks: a first load of the output's Delta table into Postgres/pgvector and LanceDB, then a daily 2% change,
against hand-written peers in the same run.

    python -m benchmarks.sinks [--rows 1000000] [--dim 384] [--shard-rows 100000] [--change 0.02]

Builds an output the way a run leaves it (shards of id, title, a ``fixed_size_list<float32>`` vector and
``_text_key``, published as a Delta table by ``batchembed.output.publish``), starts a real PostgreSQL 16 + pgvector
(pgserver, a Unix socket in a temp dir), then, each step a measured child process (wall, CPU, peak RSS):

- ``batchembed sync`` into Postgres (binary COPY) and into LanceDB (one overwrite commit), the first load;
- the peers: ``executemany`` of INSERTs with pgvector's psycopg adapter (batch by batch, one transaction),
  and LanceDB ``table.add`` of the whole table read into memory;
- a daily change of ``--change`` of the rows (half edited, a quarter deleted, a quarter new ids), spread
  over every shard, so every shard is rewritten under a new name (the case where rows merely rewritten
  must not be written again), published as the next Delta version; ``batchembed sync`` again: rows
  written and deleted against rows changed. A peer that reloads writes every row again (its first-load
  figures: the same work);
- the sinks compared with the table (``batchembed.sinks.audit``: count, id digest, sampled vectors).

Results on stdout and in ``benchmarks/results-sinks.json``, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import ROOT, run_measured

RESULTS = ROOT / "benchmarks" / "results-sinks.json"
PG_TABLE, PEER_PG = "bench_ours", "bench_peer"
LANCE_TABLE, PEER_LANCE = "ours", "peer"


# ------------------------------------------------------------------------------------------- data


def _shard(ids: np.ndarray, vectors: np.ndarray, keys: np.ndarray, dim: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "title": pa.array([f"title {i}" for i in ids.tolist()], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
            "_text_key": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(ids), [None, pa.py_buffer(np.ascontiguousarray(keys).tobytes())]
            ),
        }
    )


def _vectors(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _keys(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 16), dtype=np.uint8)


def _publish(out: Path, names: list[str], tag: int) -> int:
    from batchembed.fs.location import locate
    from batchembed.output.publish.delta import publish
    from batchembed.output.publish.files import read_table_file

    where = locate(str(out))
    return publish(where, None, [read_table_file(where, n) for n in names], tag=tag)


def make_output(out: Path, rows: int, dim: int, shard_rows: int) -> None:
    """Version 0: ``rows`` rows in shards of ``shard_rows``."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    names = []
    for n, start in enumerate(range(0, rows, shard_rows)):
        ids = np.arange(start, min(rows, start + shard_rows), dtype=np.int64)
        table = _shard(ids, _vectors(rng, len(ids), dim), _keys(rng, len(ids)), dim)
        names.append(f"part-{n:05d}-be0c0000.parquet")  # named as a run names its shards (attempt tag)
        pq.write_table(table, out / names[-1], row_group_size=8192)
    _publish(out, names, 1)


def change_output(out: Path, dim: int, share: float) -> dict[str, int]:
    """Version 1: every shard rewritten under a new name with ``share`` of the rows changed."""
    from deltalake import DeltaTable

    rng = np.random.default_rng(1)
    old = sorted(DeltaTable(str(out)).file_uris())
    total = sum(pq.read_metadata(f).num_rows for f in old)
    counts = {"edited": round(total * share / 2), "deleted": round(total * share / 4), "added": 0}
    counts["added"] = round(total * share) - counts["edited"] - counts["deleted"]
    edit_every = total // counts["edited"]
    delete_every = total // counts["deleted"]
    names, next_id, per_file = [], total + 10_000_000, -(-counts["added"] // len(old))
    for n, path in enumerate(old):
        t = pq.read_table(path)
        ids = t.column("id").to_numpy()
        vectors = t.column("embedding").combine_chunks().values.to_numpy().reshape(-1, dim).copy()
        column = t.column("_text_key").combine_chunks()
        keys = (
            np.frombuffer(column.buffers()[1], np.uint8)[column.offset * 16 :][: len(ids) * 16].reshape(-1, 16).copy()
        )
        edit = ids % edit_every == 3
        vectors[edit] = _vectors(rng, int(edit.sum()), dim)
        keys[edit] = _keys(rng, int(edit.sum()))
        keep = ids % delete_every != 5
        new_ids = np.arange(next_id, next_id + per_file, dtype=np.int64)
        next_id += per_file
        table = pa.concat_tables(
            [
                _shard(ids[keep], vectors[keep], keys[keep], dim),
                _shard(new_ids, _vectors(rng, per_file, dim), _keys(rng, per_file), dim),
            ]
        )
        names.append(f"part-{1_000_000 + n:07d}-be0c0001.parquet")
        pq.write_table(table, out / names[-1], row_group_size=8192)
    _publish(out, names, 2)
    counts["added"] = per_file * len(old)
    counts["edited"] = int(sum((np.arange(total) % edit_every == 3) & (np.arange(total) % delete_every != 5)))
    counts["deleted"] = int(sum(np.arange(total) % delete_every == 5))
    counts["rows_before"] = total
    return counts


def write_job(root: Path, out: Path) -> Path:
    job = root / "job.toml"
    job.write_text(
        f'[input]\npath = "{root}/no-input"\ntext = "text"\nid = "id"\nkeep = ["title"]\n'
        f'[model]\nprovider = "local"\n[output]\npath = "{out}"\n'
        f'[[sink]]\nkind = "postgres"\ntable = "{PG_TABLE}"\n'
        f'[[sink]]\nkind = "lancedb"\nuri = "{root}/lance"\ntable = "{LANCE_TABLE}"\n'
    )
    return job


# ------------------------------------------------------------------------------------------- peers


def peer_postgres(out: str, dsn: str) -> None:
    """The hand-written loader: executemany of INSERTs, vectors through pgvector's psycopg adapter."""
    import psycopg
    import pyarrow.dataset as ds
    from deltalake import DeltaTable
    from pgvector.psycopg import register_vector

    files = DeltaTable(out).file_uris()
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        dim = pq.read_schema(files[0]).field("embedding").type.list_size
        conn.execute(f"CREATE TABLE {PEER_PG} (id bigint PRIMARY KEY, title text, embedding vector({dim}))")
        with conn.cursor() as cur:
            for batch in ds.dataset(files).to_batches(columns=["id", "title", "embedding"], batch_size=8192):
                vectors = batch.column(2).values.to_numpy().reshape(-1, dim)
                rows = zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), vectors, strict=True)
                cur.executemany(f"INSERT INTO {PEER_PG} (id, title, embedding) VALUES (%s, %s, %s)", list(rows))
        conn.commit()


def peer_lancedb(out: str, uri: str) -> None:
    """The hand-written loader: LanceDB ``table.add`` of the whole table (read into memory)."""
    import lancedb
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    table = ds.dataset(DeltaTable(out).file_uris()).to_table(columns=["id", "title", "embedding"])
    db = lancedb.connect(uri)
    sink = db.create_table(PEER_LANCE, schema=table.schema, mode="overwrite")
    sink.add(table)


def check(job: str) -> None:
    """The sinks against the table (count, id digest, sampled vectors)."""
    from batchembed.job.config import load_job
    from batchembed.sinks.audit import problems

    found = problems(load_job(job))
    print(json.dumps({"problems": found}))
    sys.exit(1 if found else 0)


# ------------------------------------------------------------------------------------------- driver


def server_cpu(root: Path) -> float:
    """CPU seconds the PostgreSQL server has used so far: the postmaster, its live backends, and (through the
    postmaster's children times) every backend that has exited."""
    import psutil

    pid = int((root / "pg" / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    t = master.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in master.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def _backends(root: Path) -> int:
    import psutil

    return len(psutil.Process(int((root / "pg" / "postmaster.pid").read_text().split()[0])).children())


def _backends_gone(root: Path, count: int, timeout: float = 10.0) -> None:
    """Wait until the step's backends have exited and been reaped (their CPU is then in the postmaster's
    children times)."""
    deadline = time.monotonic() + timeout
    while _backends(root) > count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def _step(name: str, cmd: list[str], root: Path, env: dict[str, str]) -> dict:
    load = os.getloadavg()[0]
    before = _backends(root)
    server = server_cpu(root)
    m = run_measured(cmd, root / "logs" / f"{name}.log", timeout=7200, poll=0.1, env=env)
    _backends_gone(root, before)
    server = server_cpu(root) - server
    if m.returncode != 0:
        raise SystemExit(f"{name} failed ({m.returncode}):\n{m.log}")
    print(f"{name}: {m.wall:.1f} s, CPU {m.cpu:.1f} s (Postgres server {server:.1f} s), peak RSS "
          f"{m.peak_rss_mb:.0f} MB, load {load:.1f}", flush=True)  # fmt: skip
    return {"wall_s": round(m.wall, 2), "cpu_s": round(m.cpu, 2), "server_cpu_s": round(server, 2),
            "peak_rss_mb": round(m.peak_rss_mb), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2), "log": m.log}  # fmt: skip


def _synced(log: str, kind: str) -> tuple[int, int]:
    found = re.search(rf"sink {kind} table .*?: synced to version \d+: ([\d,]+) rows written, ([\d,]+) deleted", log)
    if not found:
        raise SystemExit(f"no sync line for {kind}:\n{log}")
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--change", type=float, default=0.02)
    p.add_argument("--root", help="work directory (default: a temp dir, removed at the end)")
    p.add_argument("--only", choices=["postgres", "lancedb"], help="one store only")
    args = p.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="batchembed-sinks-"))
    root.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    import pgserver

    server = pgserver.get_server(root / "pg", cleanup_mode="stop")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        dsn = f"postgresql://postgres@/postgres?host={str(server.get_uri()).split('host=', 1)[1]}"
        env = {**os.environ, "BATCHEMBED_PG_DSN": dsn, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        make_output(out, args.rows, args.dim, args.shard_rows)
        print(f"output: {args.rows:,} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)
        job = str(write_job(root, out))
        cli = [sys.executable, "-m", "batchembed.cli", "sync", job, "--sink"]
        me = [sys.executable, "-m", "benchmarks.sinks"]
        results: dict = {"rows": args.rows, "dim": args.dim, "shard_rows": args.shard_rows, "cpus": os.cpu_count()}
        pg, lance = args.only != "lancedb", args.only != "postgres"
        if pg:
            results["pg_ours_load"] = _step("pg_ours_load", [*cli, PG_TABLE], root, env)
            results["pg_peer_load"] = _step("pg_peer_load", [*me, "peer-postgres", str(out), dsn], root, env)
        if lance:
            results["lance_ours_load"] = _step("lance_ours_load", [*cli, LANCE_TABLE], root, env)
            results["lance_peer_load"] = _step("lance_peer_load", [*me, "peer-lancedb", str(out), str(root / "lance")],
                                               root, env)  # fmt: skip
        counts = change_output(out, args.dim, args.change)
        results["change"] = counts
        print(f"change: {counts}", flush=True)
        if pg:
            results["pg_ours_daily"] = _step("pg_ours_daily", [*cli, PG_TABLE], root, env)
        if lance:
            results["lance_ours_daily"] = _step("lance_ours_daily", [*cli, LANCE_TABLE], root, env)
        if pg and lance:
            results["check"] = _step("check", [*me, "check", job], root, env)
        changed = counts["edited"] + counts["added"]
        for kind, key in (("postgres", "pg_ours_daily"), ("lancedb", "lance_ours_daily")):
            if key not in results:
                continue
            written, deleted = _synced(results[key]["log"], kind)
            results[key].update(written=written, deleted=deleted, written_per_changed=round(written / changed, 4),
                                written_share=round(written / counts["rows_before"], 4))  # fmt: skip
        for key in ("pg_ours_load", "pg_peer_load", "lance_ours_load", "lance_peer_load"):
            if key in results:
                step = results[key]
                step["rows_per_s"] = round(args.rows / step["wall_s"])
                step["rows_per_cpu_s"] = round(args.rows / (step["cpu_s"] + step["server_cpu_s"]))
        for step in results.values():
            if isinstance(step, dict):
                step.pop("log", None)
        name = RESULTS if not args.only else RESULTS.with_name(f"results-sinks-{args.only}.json")
        name.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        server.cleanup()
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peer-postgres":
        peer_postgres(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "peer-lancedb":
        peer_lancedb(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        main()
