"""Jobs on the embedded model: in-process (provider = "local") and through a real `batchembed serve`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.providers.local import LocalEmbedder
from tests.conftest import ROOT, cli_env, read_output, run_here, write_job

TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?",
    "The stock market fell sharply on Monday.",
    "",
    "Electric buses are becoming common in European cities.",
] * 5


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder()


@pytest.fixture(scope="module")
def serve_url():
    """A real `batchembed serve` started through the CLI on a free port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchembed.cli", "serve", "--port", "0"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        yield line.rsplit(" ", 1)[1].strip() + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def _input(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), src)
    return src


def _vectors(table, column="embedding"):
    col = table.column(column).combine_chunks()
    return col, col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)


@pytest.mark.parametrize("dimensions", [None, 128])
def test_local_provider_job_matches_the_model(tmp_path, embedder, dimensions):
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(_input(tmp_path)), "id": "id"},
            "model": {"provider": "local", "dimensions": dimensions},
            "limits": {"batch_inputs": 8, "concurrency": 2},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 10},
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    col, got = _vectors(table)
    dim = dimensions or 384
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    sendable = [i for i, t in enumerate(TEXTS) if t]
    want, _ = embedder.encode([TEXTS[i] for i in sendable], dimensions=dimensions)
    np.testing.assert_allclose(got[sendable], want, atol=1e-5)
    assert not col.is_valid()[5].as_py()  # the empty text
    np.testing.assert_allclose(np.linalg.norm(got[sendable], axis=1), 1.0, atol=1e-5)


def test_openai_compatible_job_against_batchembed_serve(tmp_path, embedder, serve_url):
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(_input(tmp_path)), "id": "id"},
            "model": {
                "provider": "openai-compatible",
                "base_url": serve_url,
                "name": "all-MiniLM-L6-v2",
                "encoding": "base64",
            },
            "limits": {"batch_inputs": 4, "concurrency": 4},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _, got = _vectors(read_output(tmp_path / "out"))
    sendable = [i for i, t in enumerate(TEXTS) if t]
    want, _ = embedder.encode([TEXTS[i] for i in sendable])
    np.testing.assert_allclose(got[sendable], want, atol=1e-5)


@pytest.mark.parametrize("where", ["serve", "local"])
def test_rerank_job_scores_by_cosine(tmp_path, embedder, where, request):
    queries = ["pets sleeping", "company finances"]
    docs = [t for t in TEXTS[:5]]
    rows = {"query": [q for q in queries for _ in docs], "document": docs * len(queries)}
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.table(rows), src)
    model = (
        {"provider": "openai-compatible", "base_url": request.getfixturevalue("serve_url"), "name": "all-MiniLM-L6-v2"}
        if where == "serve"
        else {"provider": "local"}
    )
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(src)},
            "model": model,
            "limits": {"batch_inputs": 2, "concurrency": 2},
            "output": {"path": str(tmp_path / "out")},
            "rerank": {"layout": "pairs", "top_n": 2},
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out").to_pylist()
    vq, _ = embedder.encode(queries)
    vd, _ = embedder.encode(docs)
    for qi, q in enumerate(queries):
        cos = vd @ vq[qi]
        best = [f"pairs.parquet:{qi * len(docs) + int(j)}" for j in np.argsort(-cos)[:2]]
        got = [r for r in table if r["query_id"] == q]
        assert [r["doc_id"] for r in got] == best
        assert [r["rank"] for r in got] == [1, 2]
        np.testing.assert_allclose([r["score"] for r in got], np.sort(cos)[::-1][:2], atol=1e-4)
    assert table[0]["doc_id"] in ("pairs.parquet:0", "pairs.parquet:1")  # pets: cat or kitten first
