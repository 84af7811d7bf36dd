"""The hand-written baseline: embed a Parquet file the way the openai SDK's docs suggest.

    python -m benchmarks.baseline --input in.parquet --base-url http://127.0.0.1:PORT/v1 \
        --encoding float --out out.parquet

Read the whole input with ``pyarrow.parquet.read_table``; send batches of 256 texts with
``AsyncOpenAI(...).embeddings.create(model=..., input=batch, encoding_format=...)``, all at once
through ``asyncio.gather`` under an ``asyncio.Semaphore(32)``; collect every vector in a Python list
(float: the SDK's ``list[float]``; base64: ``numpy.frombuffer(base64.b64decode(...), "<f4")`` as the
cookbook shows); then write ONE Parquet file with a ``list<float32>`` column. No retries beyond the
SDK's own (``max_retries=2``), no rate limiting, no resume.

Prints one JSON line: rows, wall seconds, rows/s, CPU seconds and peak RSS of this process (also
measured from outside by ``benchmarks.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from openai import AsyncOpenAI


async def embed_all(
    texts: list[str], base_url: str, model: str, encoding: str, batch_size: int, concurrency: int
) -> list:
    client = AsyncOpenAI(base_url=base_url, api_key="x")
    sem = asyncio.Semaphore(concurrency)

    async def one(batch: list[str]) -> list:
        async with sem:
            resp = await client.embeddings.create(model=model, input=batch, encoding_format=encoding)
        data = sorted(resp.data, key=lambda d: d.index)
        if encoding == "base64":
            return [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in data]
        return [d.embedding for d in data]

    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    try:
        results = await asyncio.gather(*(one(b) for b in batches))
    finally:
        await client.close()
    vectors: list = []
    for r in results:
        vectors.extend(r)
    return vectors


def to_arrow(vectors: list, encoding: str) -> pa.Array:
    """A ``list<float32>`` column from the collected vectors."""
    if encoding == "base64":
        flat = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
        offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
        np.cumsum([len(v) for v in vectors], out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))
    return pa.array(vectors, type=pa.list_(pa.float32()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--encoding", choices=["float", "base64"], default="float")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--text", default="text")
    parser.add_argument("--id", default="id")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    table = pq.read_table(args.input, columns=[args.id, args.text])
    texts = table.column(args.text).to_pylist()
    vectors = asyncio.run(embed_all(texts, args.base_url, args.model, args.encoding, args.batch, args.concurrency))
    out = pa.table({args.id: table.column(args.id), "embedding": to_arrow(vectors, args.encoding)})
    pq.write_table(out, args.out)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM, not ru_maxrss: the latter includes the parent's high-water mark inherited across fork.
    with open("/proc/self/status") as fh:
        hwm_kb = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), ru.ru_maxrss)
    print(
        json.dumps(
            {
                "rows": len(texts),
                "wall_seconds": round(wall, 3),
                "rows_per_second": round(len(texts) / wall, 1),
                "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3),
                "peak_rss_mb": round(hwm_kb / 1024, 1),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
