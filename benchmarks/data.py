"""Deterministic synthetic input for the benchmarks: ``id`` (int64) and ``text`` (20-120 words).

Texts are sentences of pseudo-words drawn from a Zipf-like vocabulary (a few common short words,
a long tail of longer ones, ~2% of rows with a non-ASCII word), so UTF-8 lengths and token counts
look like real documents: about 6.5 bytes per word, ~450 bytes and ~115 tokens per row on average.
Rows are generated in blocks of 10,000 with a per-block seed, so a smaller file is always a prefix
of a larger one. Files are cached as ``benchmarks/.data/texts-<rows>.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.fs.atomic import atomic_path

DATA_DIR = Path(__file__).resolve().parent / ".data"
BLOCK = 10_000
SEED = 20240611

_ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "ck"]
_COMMON = "the of and to a in is that for it as was with on be by this are from at or an have not".split()
_FOREIGN = ["café", "naïve", "über", "façade", "東京", "データ", "señor", "Zürich", "crème", "résumé"]


def _vocabulary(size: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    words = list(_COMMON)
    seen = set(words)
    while len(words) < size:
        n_syll = int(rng.choice([1, 1, 1, 2, 2, 3]))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n_syll)
        )
        if w not in seen and not any(bad in w for bad in ("fuck", "shit", "cunt")):
            seen.add(w)
            words.append(w)
    ranks = np.arange(1, size + 1, dtype=np.float64)
    p = 1.0 / (ranks + 2.7) ** 1.1
    return np.array(words, dtype=object), p / p.sum()


def _block(index: int, rows: int, vocab: np.ndarray, p: np.ndarray) -> list[str]:
    rng = np.random.default_rng([SEED, index])
    lengths = rng.integers(20, 121, size=rows)
    words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
    foreign = rng.random(rows) < 0.02
    out = []
    pos = 0
    for i, n in enumerate(lengths):
        row = list(words[pos : pos + n])
        pos += n
        if foreign[i]:
            row[n // 2] = _FOREIGN[i % len(_FOREIGN)]
        # sentences of 8-20 words
        j = 0
        parts = []
        while j < n:
            k = min(n, j + 8 + (i + j) % 13)
            sent = row[j:k]
            parts.append(" ".join([sent[0].capitalize(), *sent[1:]]) + ".")
            j = k
        out.append(" ".join(parts))
    return out


def make_texts(rows: int) -> list[str]:
    """The first ``rows`` texts of the deterministic stream."""
    vocab, p = _vocabulary()
    texts: list[str] = []
    for b in range(-(-rows // BLOCK)):
        texts.extend(_block(b, min(BLOCK, rows - b * BLOCK), vocab, p))
    return texts


def dataset(rows: int, directory: Path = DATA_DIR) -> Path:
    """Path of the cached ``rows``-row input file, generating it if needed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"texts-{rows}.parquet"
    if path.exists():
        return path
    texts = make_texts(rows)
    table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "text": pa.array(texts, pa.string())})
    with atomic_path(path) as tmp:  # a killed generation never leaves a half file under the cached name
        pq.write_table(table, tmp, row_group_size=100_000)
    return path


def server_tokens(path: Path) -> np.ndarray:
    """Tokens per row as ``benchmarks.server`` counts them: ceil(utf8 bytes / 4) + 1."""
    import pyarrow.compute as pc

    col = pq.read_table(path, columns=["text"]).column("text")
    nbytes = pc.binary_length(col).to_numpy().astype(np.int64)
    return -(-nbytes // 4) + 1


if __name__ == "__main__":
    import sys
    import time

    for n in map(int, sys.argv[1:] or ["20000"]):
        t = time.perf_counter()
        f = dataset(n)
        tok = server_tokens(f)
        print(f"{f}: {n} rows, {tok.mean():.1f} tokens/row, {time.perf_counter() - t:.1f}s")
