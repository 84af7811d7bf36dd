"""Sentences per second of the embedded local model (``provider = "local"``), in-process.

    python -m benchmarks.local_model [--sentences 2000]

Two inputs from the shipped sample generator: single sentences (~15 tokens, the usual yardstick
for sentence-embedding servers) and whole rows of title + body (~50 tokens). Each is embedded
through ``LocalEmbedder.embed`` in batches of 256, as a ``batchembed run`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from batchembed.providers.local import LocalEmbedder

ROOT = Path(__file__).resolve().parents[1]


def sample_texts(n: int) -> tuple[list[str], list[str]]:
    """(single sentences, whole rows) from the sample generator."""
    sys.path.insert(0, str(ROOT / "jobs"))
    import make_sample

    with tempfile.TemporaryDirectory() as tmp:
        make_sample.main(["--out", tmp, "--rows", str(max(n, 1000))])
        table = pq.read_table(tmp).to_pydict()
    rows = [f"{t}\n\n{b or ''}" for t, b in zip(table["title"], table["body"], strict=True)][:n]
    sentences = [s for b in table["body"] if b for s in re.split(r"(?<=[.!?])\s+", b) if len(s) > 10][:n]
    return sentences, rows


async def rate(embedder: LocalEmbedder, texts: list[str], batch: int = 256) -> float:
    """Texts per second through ``embed`` in batches of ``batch``."""
    await embedder.embed(texts[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        await embedder.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    args = parser.parse_args()
    sentences, rows = sample_texts(args.sentences)
    embedder = LocalEmbedder()
    for name, texts in (("single sentences", sentences), ("title + body rows", rows)):
        tokens = embedder.count_tokens(texts).mean()
        per_second = asyncio.run(rate(embedder, texts))
        print(f"local model, {name}: {per_second:,.0f} texts/s ({tokens:.0f} tokens each on average)", flush=True)


if __name__ == "__main__":
    main()
