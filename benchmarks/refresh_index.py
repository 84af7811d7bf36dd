"""The refresh's "is this text already in the output?" at table scale: peak memory of a 2% refresh's lookups.

    python -m benchmarks.refresh_index --rows 1000000 10000000      # ~2 min, ~1 GB of synthetic shards

An embed output of ``--rows`` rows is written synthetically (shards of 100,000 rows: random 16-byte
``_text_key`` values, as the real keys are hashes, and 16-dimensional vectors), then a child process
does what a refresh's ``prepare`` does: it opens the output's ``OutputCache`` over every shard and asks
it, chunk by chunk (10,000 keys a chunk), for 2% of the table's rows — half of them texts the output
holds (from five of its shards, shuffled: a refresh's rewritten files; their vectors are read back),
half new texts (``--held``). ``index_mb`` is the RSS the index added once built (the first lookup, of
a key no shard holds), ``peak_rss_mb`` the whole child's peak (the index plus what reading hits back
holds). Reported per size: the child's peak RSS (VmHWM)
and that of the same child doing nothing but importing (the difference is what the index costs), the
wall time to the first answer (the index is built) and of all the lookups, and that every held key
came back with its own vector. Results are appended to ``benchmarks/refresh_index.json``.

No server and no embedding: the index is the only thing measured (``benchmarks.refresh`` measures a
whole refresh).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import PY, WORK, vm_hwm

SHARD_ROWS = 100_000
DIM = 16
CHUNK = 10_000


def vectors_of(keys: np.ndarray) -> np.ndarray:
    """The synthetic vector of each key (its first 16 bytes as 4 float32s, repeated): checkable anywhere."""
    head = np.frombuffer(keys.tobytes(), dtype=np.uint32).reshape(-1, 4).astype(np.float32)
    return np.tile(head, (1, DIM // 4))


def write_output(root: Path, rows: int, seed: int = 7) -> list[str]:
    """Shards of ``rows`` rows in ``root`` (made once per size and kept): their names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    rng = np.random.default_rng(seed)
    for i, start in enumerate(range(0, rows, SHARD_ROWS)):
        name = f"part-{i:05d}-bench.parquet"
        names.append(name)
        if (root / name).exists():
            rng.bytes(16 * min(SHARD_ROWS, rows - start))  # keep the stream the same
            continue
        n = min(SHARD_ROWS, rows - start)
        raw = rng.bytes(16 * n)
        vec = vectors_of(np.frombuffer(raw, dtype="V16"))
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + n)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), DIM),
                "_text_key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)]),
            }
        )
        pq.write_table(table, root / name, row_group_size=10_000)
    return names


_CHILD = r"""
import json, sys, time
from types import SimpleNamespace
import numpy as np, pyarrow.parquet as pq
from batchembed.fs.location import locate
from batchembed.output.cache import OutputCache
from batchembed.output.store.local import LocalStore
from benchmarks.refresh_index import CHUNK, vectors_of
root, names, share, idle = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "idle"
held_share = float(sys.argv[5])


def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmRSS:"))


if idle:
    print(json.dumps({}))
    sys.exit(0)
rng = np.random.default_rng(11)
sizes = [pq.ParquetFile(f"{root}/{n}").metadata.num_rows for n in names]
rows = sum(sizes)
want = int(rows * share)
# the held half comes from five old shards (a refresh's changed files), in a new order
shards = rng.choice(len(names), size=min(5, len(names)), replace=False)
pool = np.concatenate([np.arange(s * 100_000, min(rows, (s + 1) * 100_000)) for s in shards])
held_at = np.sort(rng.choice(pool, size=min(len(pool), int(want * held_share)), replace=False))
held = []
for i, n in enumerate(names):  # the held keys, read shard by shard (a refresh knows them from its input)
    lo, hi = i * 100_000, (i + 1) * 100_000
    pick = held_at[(held_at >= lo) & (held_at < hi)] - lo
    if len(pick):
        keys = pq.read_table(f"{root}/{n}", columns=["_text_key"]).column(0).combine_chunks()
        held.append(np.frombuffer(keys.buffers()[1], dtype="V16")[pick])
held = np.concatenate(held) if held else np.zeros(0, "V16")
fresh = np.frombuffer(rng.bytes(16 * (want - len(held))), dtype="V16")
asked = np.concatenate([held, fresh])
asked = [x.tobytes() for x in asked[rng.permutation(len(asked))]]
store = LocalStore(locate(root))
before = rss_mb()
start = time.perf_counter()
cache = OutputCache(store, [SimpleNamespace(name=n, rows=k) for n, k in zip(names, sizes)], "embedding")
cache.lookup([bytes(16)])  # a key no shard holds: the index is built (and nothing read back)
built = time.perf_counter() - start
index_mb = rss_mb() - before
first = None
found = 0
ok = True
for a in range(0, len(asked), CHUNK):
    got = cache.lookup(asked[a : a + CHUNK])  # a chunk's answers are copied into its piece, then dropped
    if first is None:
        first = time.perf_counter() - start
    keys = np.frombuffer(b"".join(got), dtype="V16")
    ok = ok and all(np.array_equal(got[k], v) for k, v in zip(got, vectors_of(keys)))
    found += len(got)
total = time.perf_counter() - start
ok = ok and found == len(held)
print(json.dumps({"asked": len(asked), "found": found, "held": len(held), "correct": bool(ok),
                  "index_mb": index_mb, "built_s": round(built, 2),
                  "first_answer_s": round(first, 2), "lookups_s": round(total, 2)}))
"""


def measure(root: Path, names: list[str], share: float, held: float, idle: bool = False) -> dict:
    """Run the child; its answer plus its peak RSS (VmHWM, read just before it exits)."""
    mode = "idle" if idle else "run"
    cmd = [PY, "-c", _CHILD + "\ninput()\n", str(root), json.dumps(names), str(share), mode, str(held)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    peak = vm_hwm(proc.pid)
    proc.communicate("\n")
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"benchmark child failed ({proc.returncode})")
    return {**json.loads(line), "peak_rss_mb": round(peak / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--share", type=float, default=0.02, help="share of the rows a refresh looks up")
    ap.add_argument("--held", type=float, default=0.5, help="share of the lookups the output holds")
    ap.add_argument("--label", default="", help="a name for this run in the results (e.g. before / after)")
    args = ap.parse_args()
    results = []
    for rows in args.rows:
        root = WORK / f"refresh-index-{rows}"
        t0 = time.perf_counter()
        names = write_output(root, rows)
        made = time.perf_counter() - t0
        idle = measure(root, names, args.share, args.held, idle=True)
        got = measure(root, names, args.share, args.held)
        result = {
            "label": args.label,
            "rows": rows,
            "shards": len(names),
            "share": args.share,
            "held": args.held,
            "idle_rss_mb": idle["peak_rss_mb"],
            **got,
            "above_idle_mb": got["peak_rss_mb"] - idle["peak_rss_mb"],
            "made_s": round(made, 1),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    out = Path(__file__).with_name("refresh_index.json")
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*previous, {"at": time.strftime("%Y-%m-%d %H:%M"), "results": results}], indent=1))


if __name__ == "__main__":
    sys.exit(main())
