"""Jobs against a real server and their output read back, for every test in ``tests/servers/``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import make_texts, read_output, write_job


def write_corpus(path: Path, n: int, long_every: int = 10) -> dict[str, str]:
    """``corpus.jsonl.gz`` as BEIR ships it (``_id``, ``title`` nested under ``meta``, ``text``); returns
    id -> the text the job embeds. Every ``long_every``-th text is ~700 characters (~150 tokens):
    under the job's 256-token limit, far over it counted in characters."""
    texts = make_texts(n)
    embedded = {}
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            if i % long_every == 0:
                text = (text + " ") * max(1, 700 // len(text))
            record = {"_id": f"doc{i}", "meta": {"title": f"Title {i}"}, "text": text}
            fh.write(json.dumps(record) + "\n")
            embedded[f"doc{i}"] = f"Title {i}\n\n{text}"
    return embedded


def corpus_job(tmp_path: Path, name: str, corpus: Path, model: dict, **sections) -> Path:
    """A job over ``write_corpus``'s file (the text templated from two fields) into ``tmp_path/name``."""
    base = {
        "input": {"path": str(corpus), "text": "{meta.title}\n\n{text}", "id": "_id"},
        "model": model,
        "limits": {"batch_inputs": 64, "concurrency": 4, "input_tokens": 256, "max_retries": 3},
        "output": {"path": str(tmp_path / name), "shard_rows": 100},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return write_job(tmp_path / f"{name}.toml", base)


def write_rows(path: Path, rows: dict[int, str], row_group_size: int = 50) -> Path:
    """A Parquet input of ``id`` and ``text``."""
    table = pa.table({"id": pa.array(list(rows), pa.int64()), "text": pa.array(list(rows.values()), pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def distinct_texts(n: int, seed: int, tag: str) -> list[str]:
    """``n`` realistic-ish texts, each unique (``tag`` and its position lead it)."""
    return [f"{tag} {i}. {text.split(': ', 1)[1]}" for i, text in enumerate(make_texts(n, seed=seed))]


def vectors(out: Path, id_column: str = "_id") -> dict:
    """The output's vectors by id, float64; fails if an id appears twice."""
    table = read_output(out)
    ids = table.column(id_column).to_pylist()
    assert len(ids) == len(set(ids)), "an id is in the output twice"
    found = table.column("embedding").to_pylist()
    return {i: np.asarray(v, dtype=np.float64) for i, v in zip(ids, found, strict=True)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def worst_match(got: dict, want: dict) -> float:
    """The lowest cosine between ``got[i]`` and ``want[i]`` over every id of ``want``."""
    return min(cosine(got[i], want[i]) for i in want)


def report(out: Path) -> dict:
    return json.loads((out / "_report.json").read_text())
