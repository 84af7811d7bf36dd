"""batchembed against Infinity (michaelfeil/infinity), a server nobody here wrote (``make test-servers``).

Infinity 0.0.78 serves the int8 MiniLM that the local provider embeds in-process, so its vectors can
be checked against ours for the same texts. Its quirks, as ../shared reference "real-servers" found
them: usage counted in characters, the served name in every answer whatever was asked, ``dimensions``
honoured by cutting (and refused above 384), no rate-limit headers, at most 2,048 inputs a request.
Inputs here are compressed JSON Lines with nested fields, so the readers are exercised end to end.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import make_texts, read_output, run_here, write_job

URL = os.environ["INFINITY_URL"]
MODEL = os.environ["INFINITY_MODEL"]
VERSION = os.environ.get("INFINITY_VERSION", "?")


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


def job(tmp_path: Path, name: str, corpus: Path, model: dict, **sections) -> Path:
    base = {
        "input": {"path": str(corpus), "text": "{meta.title}\n\n{text}", "id": "_id"},
        "model": model,
        "limits": {"batch_inputs": 64, "concurrency": 4, "input_tokens": 256, "max_retries": 3},
        "output": {"path": str(tmp_path / name), "shard_rows": 100},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return write_job(tmp_path / f"{name}.toml", base)


def infinity(**extra) -> dict:
    return {"provider": "openai-compatible", "base_url": URL, "name": MODEL, "timeout": 60.0, **extra}


def vectors(out: Path) -> dict[str, np.ndarray]:
    table = read_output(out)
    ids = table.column("_id").to_pylist()
    return {i: np.asarray(v, dtype=np.float64) for i, v in zip(ids, table.column("embedding").to_pylist(), strict=True)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def report(out: Path) -> dict:
    return json.loads((out / "_report.json").read_text())


def test_rows_that_fit_arrive_whole_and_match_the_local_model(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 400)
    served = run_here(None, "run", str(job(tmp_path, "inf", corpus, infinity())), "--quiet")
    assert served.returncode == 0, served.stderr
    local = run_here(None, "run", str(job(tmp_path, "local", corpus, {"provider": "local"})), "--quiet")
    assert local.returncode == 0, local.stderr

    got, want = vectors(tmp_path / "inf"), vectors(tmp_path / "local")
    assert set(got) == set(texts)  # every row, once
    worst = min(cosine(got[i], want[i]) for i in texts)
    assert worst >= 0.99, worst  # the same model behind both, and whole texts on both sides
    facts = report(tmp_path / "inf")
    assert facts["rows_truncated"] == 0  # the ~700-character rows fit in tokens: none was cut
    assert not (tmp_path / "inf" / "_truncated.parquet").exists()
    # Infinity counts characters: far more than tokens, said once, and only used for pacing
    assert facts["usage_ratio"] > 2, facts["usage_ratio"]
    assert "usage counts" in served.stderr
    assert run_here(None, "verify", str(tmp_path / "inf.toml")).returncode == 0
    print(
        f"\nInfinity {VERSION}: {facts['rows']['embedded']} rows in {facts['elapsed_seconds']} s "
        f"({facts['rows_per_second']} rows/s), usage ratio {facts['usage_ratio']} (characters per token), "
        f"worst cosine to the local model {worst:.4f}"
    )


def test_dimensions_above_the_model_stop_at_once(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, 50)
    result = run_here(None, "run", str(job(tmp_path, "inf", corpus, infinity(dimensions=400))), "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "400" in result.stderr and "384" in result.stderr, result.stderr  # Infinity's own reason, quoted
    assert not list((tmp_path / "inf").glob("part-*.parquet"))  # nothing sent but the canary


def test_dimensions_below_are_the_model_vectors_cut(tmp_path):
    """Infinity honours ``dimensions`` by keeping the first values of the full vector."""
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 60)
    cut = run_here(None, "run", str(job(tmp_path, "inf", corpus, infinity(dimensions=64))), "--quiet")
    assert cut.returncode == 0, cut.stderr
    local = run_here(None, "run", str(job(tmp_path, "local", corpus, {"provider": "local"})), "--quiet")
    assert local.returncode == 0, local.stderr
    got, want = vectors(tmp_path / "inf"), vectors(tmp_path / "local")
    assert {len(v) for v in got.values()} == {64}
    assert min(cosine(got[i], want[i][:64]) for i in texts) >= 0.99
    assert pq.read_schema(next((tmp_path / "inf").glob("part-*.parquet"))).field("embedding").type.list_size == 64


def test_the_served_model_is_recorded(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, 30)
    result = run_here(None, "run", str(job(tmp_path, "inf", corpus, infinity(name="my-embedder"))), "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "inf" / "_manifest.json").read_text())
    assert manifest["server"]["served_model"] == MODEL
    assert manifest["server"]["requested_model"] == "my-embedder"
    assert report(tmp_path / "inf")["served_model"] == MODEL
    assert f"answered with model {MODEL!r}" in result.stderr


def test_limits_are_learned_without_headers(tmp_path):
    """No rate-limit header at all: the pace stays the configured one and nothing is read as a limit; a
    job asking for 2,100 inputs a request stays within Infinity's 2,048 (the openai-compatible cap), so
    no request is refused and every row arrives."""
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 2100, long_every=10**9)
    limits = {"batch_inputs": 2100, "batch_tokens": 10_000_000, "concurrency": 2}
    result = run_here(None, "run", str(job(tmp_path, "inf", corpus, infinity(), limits=limits)), "--quiet")
    assert result.returncode == 0, result.stderr
    facts = report(tmp_path / "inf")
    assert facts["limits"]["header_style"] is None
    assert facts["limits"]["tokens_per_minute_source"] != "server"
    assert facts["limits"]["over_limit_responses"] == 0
    assert facts["rows"] == {"embedded": 2100, "skipped": 0, "failed": 0, "already_done": 0}
    assert facts["retries"] == {}  # not one request refused (a 422 over 2,048 inputs would show here)
    assert set(vectors(tmp_path / "inf")) == set(texts)
