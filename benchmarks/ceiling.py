"""Ceiling clients: how fast could ANY client go against this server on this machine?

    python -m benchmarks.ceiling --mode transport --input in.parquet --base-url http://127.0.0.1:PORT/v1
    python -m benchmarks.ceiling --mode decode    --input in.parquet --base-url http://127.0.0.1:PORT/v1

Both send the same requests as ``batchembed run`` does in the benchmark (the input's texts in
order, 256 per request, ``encoding_format`` as asked) over one pooled aiohttp session with
``--concurrency`` workers pulling the next batch, like batchembed's request workers:

* ``transport``: the transport's own limit. Each answer's bytes are read and dropped; nothing
  else is done (no JSON parsing, no vectors, no output). No client that keeps the vectors can be
  faster on this machine.
* ``decode``: a minimal client that keeps the vectors: each answer is parsed with orjson and every
  vector decoded (base64 through ``base64.b64decode`` + ``numpy.frombuffer``, floats through one
  ``numpy.asarray``) into its row of one preallocated (rows, dim) float32 matrix. Nothing is
  written: what is left between it and batchembed is reading, bookkeeping, the journal and Parquet.

Prints one JSON line (rows, requests, wall seconds, rows/s, and for ``decode`` the matrix shape).
``benchmarks.run`` measures these children from outside like every other client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time

import aiohttp
import numpy as np
import orjson
import pyarrow.parquet as pq


def batches(texts: list[str], size: int) -> list[tuple[int, list[str]]]:
    """(first row, texts) of each request, in input order."""
    return [(start, texts[start : start + size]) for start in range(0, len(texts), size)]


def decode_into(out: np.ndarray, first: int, payload: bytes, count: int) -> None:
    """Decode one answer's vectors into rows ``first..first+count`` of ``out``."""
    items = orjson.loads(payload)["data"]
    if len(items) != count:
        raise RuntimeError(f"asked for {count} vectors, got {len(items)}")
    for item in items:
        value = item["embedding"]
        vec = np.frombuffer(base64.b64decode(value), dtype="<f4") if isinstance(value, str) else np.asarray(value)
        out[first + item["index"]] = vec


async def run(texts: list[str], url: str, model: str, encoding: str, size: int, concurrency: int, mode: str) -> dict:
    """Send every batch with ``concurrency`` workers; read (and in ``decode`` mode decode) every answer."""
    work = batches(texts, size)
    queue = iter(work)
    matrix: list[np.ndarray | None] = [None]
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def post(body: bytes) -> bytes:
            async with session.post(url + "/embeddings", data=body) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
                return payload

        async def worker() -> None:
            for first, batch in queue:
                body = orjson.dumps({"model": model, "input": batch, "encoding_format": encoding})
                payload = await post(body)
                if mode == "decode":
                    if matrix[0] is None:  # the first answer tells the dimension
                        dim = len(_first_vector(payload))
                        matrix[0] = np.empty((len(texts), dim), dtype=np.float32)
                    decode_into(matrix[0], first, payload, len(batch))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    shape = list(matrix[0].shape) if matrix[0] is not None else None
    return {"requests": len(work), "matrix": shape}


def _first_vector(payload: bytes) -> np.ndarray:
    value = orjson.loads(payload)["data"][0]["embedding"]
    return np.frombuffer(base64.b64decode(value), dtype="<f4") if isinstance(value, str) else np.asarray(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["transport", "decode"], required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--encoding", choices=["float", "base64"], default="base64")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--text", default="text")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    texts = pq.read_table(args.input, columns=[args.text]).column(args.text).to_pylist()
    doc = asyncio.run(
        run(texts, args.base_url.rstrip("/"), args.model, args.encoding, args.batch, args.concurrency, args.mode)
    )
    wall = time.perf_counter() - t0
    doc.update(mode=args.mode, rows=len(texts), wall_seconds=round(wall, 3))
    doc["rows_per_second"] = round(len(texts) / wall, 1)
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
