"""What publishing the Delta table costs: one commit over 100 shards, on local disk and on S3 (moto).

    python -m benchmarks.delta_publish [--files 100] [--rows 1000] [--dim 384] [--repeat 5] [--history 30]

Writes ``--files`` shards with batchembed's own ``ShardWriter`` (ids + a ``fixed_size_list<float32>``
vector column) into a local directory and, uploaded byte for byte, under a prefix of a bucket on a
``moto_server`` on 127.0.0.1. Then, per store and ``--repeat`` times on a fresh table: reading the
100 footers for file statistics (``read_table_file``), the first publish (create with 100 adds), the
same publish again (a no-op), a replace of 10% of the files (removes + adds in one commit),
``check_agrees`` (what ``verify`` would call), and a replace after ``--history`` earlier commits (the log
delta-rs replays grows until its checkpoint every 100 commits). Wall time of each call, median over
the repeats, in ms; results on stdout and in ``benchmarks/results-delta-publish.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import HERE, ROOT

sys.path.insert(0, str(ROOT))

from batchembed.fs.location import StorageOptions, locate
from batchembed.output.publish import check_agrees, delta_storage_options, publish, read_table_file
from batchembed.output.shard_writer import ShardWriter, vector_array
from tests.s3server import MotoServer


def write_shards(directory: Path, files: int, rows: int, dim: int, prefix: str = "part") -> list[str]:
    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
    names = []
    for i in range(files):
        name = f"{prefix}-{i:05d}-{uuid.uuid4().hex[:8]}.parquet"
        writer = ShardWriter(directory, name, schema)
        ids = pa.array(np.arange(i * rows, (i + 1) * rows), pa.int64())
        writer.write(pa.table({"id": ids, "embedding": vector_array(rng.random((rows, dim), dtype=np.float32))}))
        writer.commit()
        names.append(name)
    return names


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def one_round(where, options, names: list[str], spares: list[str], history: int) -> dict[str, float]:
    ms: dict[str, float] = {}
    ms["read 100 footers"], files = timed(lambda: [read_table_file(where, n) for n in names])
    ms["first publish (create)"], _ = timed(lambda: publish(where, options, files, tag=1))
    ms["same publish again (no-op)"], _ = timed(lambda: publish(where, options, files, tag=1))
    tenth = len(files) // 10
    fresh = [read_table_file(where, n) for n in spares[:tenth]]
    replaced = fresh + files[tenth:]
    ms["replace 10% (one commit)"], _ = timed(lambda: publish(where, options, replaced, tag=2))
    ms["check_agrees"], found = timed(lambda: check_agrees(where, options, replaced))
    assert found == [], found
    current, tag = replaced, 2
    for _ in range(history):  # flip one file back and forth: one commit each
        tag += 1
        swap = files[:1] if current[0].name == fresh[0].name else fresh[:1]
        current = swap + current[1:]
        publish(where, options, current, tag=tag)
    swap = files[:1] if current[0].name == fresh[0].name else fresh[:1]
    ms[f"replace after {history} commits"], _ = timed(lambda: publish(where, options, swap + current[1:], tag=tag + 1))
    return ms


def clear_log(where, s3: MotoServer | None, bucket: str | None) -> None:
    if s3 is None:
        shutil.rmtree(Path(where.key) / "_delta_log", ignore_errors=True)
        return
    for key in s3.keys(bucket, "out/_delta_log/"):
        s3.client.delete_object(Bucket=bucket, Key=key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--history", type=int, default=30)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="delta-publish-"))
    s3 = MotoServer().start()
    results: dict[str, dict[str, float]] = {}
    try:
        names = write_shards(tmp, args.files, args.rows, args.dim)
        spares = write_shards(tmp, args.files // 10, args.rows, args.dim, prefix="part-r")
        bucket = s3.new_bucket()
        for name in names + spares:
            s3.put(bucket, f"out/{name}", (tmp / name).read_bytes())
        for name, value in s3.env().items():
            os.environ.setdefault(name, value)
        stores = {
            "local": (locate(str(tmp)), None),
            "s3 (moto)": (locate(f"s3://{bucket}/out", StorageOptions(endpoint=s3.url, region="us-east-1")), bucket),
        }
        for label, (where, bkt) in stores.items():
            options = delta_storage_options(where)
            rounds = []
            for _ in range(args.repeat):
                clear_log(where, s3 if bkt else None, bkt)
                rounds.append(one_round(where, options, names, spares, args.history))
            results[label] = {k: round(statistics.median(r[k] for r in rounds), 1) for k in rounds[0]}
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.files} shards of {args.rows} rows x {args.dim} dims; median of {args.repeat} runs, ms")
    steps = list(next(iter(results.values())))
    print(f"{'step':32s}" + "".join(f"{label:>14s}" for label in results))
    for step in steps:
        print(f"{step:32s}" + "".join(f"{results[label][step]:14.1f}" for label in results))
    out = HERE / "results-delta-publish.json"
    out.write_text(json.dumps({"args": vars(args), "ms": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
