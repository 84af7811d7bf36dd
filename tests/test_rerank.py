"""Batch rerank jobs end to end: layouts, split-and-merge, top_n, response shapes, retries, resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.testing import Respond, expected_score
from tests.conftest import kill_mid_run, read_output, run_here, write_job


def _pairs_dataset(path, n_queries=40, seed=3):
    rng = np.random.default_rng(seed)
    rows = {"qid": [], "query": [], "did": [], "document": [], "lang": []}
    for q in range(n_queries):
        for d in range(int(rng.integers(1, 13))):
            rows["qid"].append(f"q{q}")
            rows["query"].append(f"what about topic {q}?")
            rows["did"].append(f"q{q}-d{d}")
            rows["document"].append(f"document {d} for topic {q} " + "words " * int(rng.integers(1, 20)))
            rows["lang"].append("en")
    pq.write_table(pa.table(rows), path, row_group_size=37)
    return rows


def _job(tmp_path, srv, src, out="out", **rerank):
    settings = {"layout": "pairs", "query": "query", "query_id": "qid", "document": "document", "doc_id": "did"}
    settings.update(rerank)
    return write_job(
        tmp_path / f"{out}.toml",
        {
            "input": {"path": str(src), "keep": ["lang"]},
            "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake-reranker", "timeout": 5.0},
            "limits": {"batch_inputs": settings.pop("batch_inputs", 4), "concurrency": 4, "max_retries": 5},
            "output": {"path": str(tmp_path / out), "shard_rows": 50},
            "rerank": settings,
        },
    )


def _expected(rows, top_n=None):
    """(qid, did, score, rank) as one big request per query would give, best first."""
    by_query: dict[str, list] = {}
    for qid, query, did, doc in zip(rows["qid"], rows["query"], rows["did"], rows["document"], strict=True):
        by_query.setdefault(qid, []).append((did, np.float32(expected_score(query, doc))))
    out = []
    for qid, docs in by_query.items():
        ranked = sorted(docs, key=lambda d: -d[1])[: top_n or None]
        out += [(qid, did, float(score), rank) for rank, (did, score) in enumerate(ranked, 1)]
    return out


def _got(table):
    return list(
        zip(
            table.column("query_id").to_pylist(),
            table.column("doc_id").to_pylist(),
            [float(np.float32(s)) for s in table.column("score").to_pylist()],
            table.column("rank").to_pylist(),
            strict=True,
        )
    )


def test_pairs_split_across_requests_equal_one_big_request(tmp_path, fake):
    rows = _pairs_dataset(tmp_path / "pairs.parquet")
    job = _job(tmp_path, fake, tmp_path / "pairs.parquet")

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert "rows scored" in result.stderr and "embedded" not in result.stderr
    table = read_output(tmp_path / "out")
    assert _got(table) == _expected(rows)
    assert table.schema.field("score").type == pa.float32() and table.schema.field("rank").type == pa.int32()
    assert set(table.column("lang").to_pylist()) == {"en"}
    assert max(len(r.inputs) for r in fake.requests) <= 4  # documents were split across requests
    assert {r.body.get("return_documents") for r in fake.requests} == {False}
    # a query never straddles two shards
    seen: dict[str, str] = {}
    for shard in sorted((tmp_path / "out").glob("part-*.parquet")):
        for qid in set(pq.read_table(shard).column("query_id").to_pylist()):
            assert qid not in seen, (qid, seen.get(qid), shard.name)
            seen[qid] = shard.name
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_top_n_is_applied_after_merging(tmp_path, fake):
    rows = _pairs_dataset(tmp_path / "pairs.parquet")
    job = _job(tmp_path, fake, tmp_path / "pairs.parquet", top_n=3, return_documents=True)
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert _got(table) == _expected(rows, top_n=3)
    docs = dict(zip(rows["did"], rows["document"], strict=True))
    assert all(
        docs[d] == t
        for d, t in zip(table.column("doc_id").to_pylist(), table.column("document").to_pylist(), strict=True)
    )


def test_lists_layout(tmp_path, fake):
    queries = [f"question {i}" for i in range(25)]
    docs = [[f"answer {i}.{j}" for j in range(i % 7 + 1)] for i in range(25)]
    ids = [[f"a{i}.{j}" for j in range(i % 7 + 1)] for i in range(25)]
    src = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"q": queries, "docs": docs, "ids": ids, "lang": ["en"] * 25}), src)
    job = _job(tmp_path, fake, src, layout="lists", query="q", query_id=None, document="docs", doc_id="ids")
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    rows = {"qid": [], "query": [], "did": [], "document": []}
    for q, ds, dids in zip(queries, docs, ids, strict=True):
        for d, did in zip(ds, dids, strict=True):
            rows["qid"].append(q)
            rows["query"].append(q)
            rows["did"].append(did)
            rows["document"].append(d)
    assert _got(table) == _expected(rows)


@pytest.mark.parametrize("fmt", ["fireworks", "cohere", "voyage", "tei"])
def test_every_response_shape(tmp_path, fake, fmt):
    rows = _pairs_dataset(tmp_path / "pairs.parquet", n_queries=8)
    fake.rerank_format = fmt
    fake.strict = True
    job = _job(tmp_path, fake, tmp_path / "pairs.parquet", format=fmt, task="Given a question, find answers")
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert _got(read_output(tmp_path / "out")) == _expected(rows)
    sent_task = {r.body.get("task") for r in fake.requests}
    assert sent_task == ({"Given a question, find answers"} if fmt == "fireworks" else {None})


def test_retries_and_a_failed_query_is_retried_whole(tmp_path, fake):
    rows = _pairs_dataset(tmp_path / "pairs.parquet")
    poison = rows["document"][5]
    fake.poison = {poison}
    fake.script(Respond(429, headers={"Retry-After": "0"}), Respond(503), Respond(500))
    job = _job(tmp_path, fake, tmp_path / "pairs.parquet")
    first = run_here(fake, "run", str(job), "--quiet")
    assert first.returncode == 3, first.stderr
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet")
    bad_query = rows["qid"][5]
    assert set(failed.column("id").to_pylist()) == {bad_query}
    assert failed.num_rows == rows["qid"].count(bad_query)  # the whole query, not just one document
    assert bad_query not in read_output(tmp_path / "out").column("query_id").to_pylist()

    fake.poison = set()
    second = run_here(fake, "run", str(job), "--quiet")
    assert second.returncode == 0, second.stderr
    got = sorted(_got(read_output(tmp_path / "out")))
    assert got == sorted(_expected(rows))


def test_sigkill_and_resume_rerank(tmp_path, srv):
    rows = _pairs_dataset(tmp_path / "pairs.parquet", n_queries=80)
    job = _job(tmp_path, srv, tmp_path / "pairs.parquet")
    kill_mid_run(srv, job, 40)
    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert _got(read_output(tmp_path / "out")) == _expected(rows)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_documents_cut_to_fit_are_listed_and_counted(tmp_path, fake):
    rows = _pairs_dataset(tmp_path / "pairs.parquet", n_queries=30)
    long_at = [3, 17, 40]
    for i in long_at:
        rows["document"][i] = f"long document {i} " + "river stone " * 300  # ~600 tokens: over the limit
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet", row_group_size=37)
    job = _job(tmp_path, fake, tmp_path / "pairs.parquet")
    job.write_text(job.read_text().replace("[limits]\n", "[limits]\ninput_tokens = 100\n"))

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert "3 truncated" in result.stderr and "_truncated.parquet" in result.stderr
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert sorted((r["id"], r["doc_id"], r["row"]) for r in cut) == sorted(
        (rows["qid"][i], rows["did"][i], i) for i in long_at
    )
    assert {(r["file"], r["reason"]) for r in cut} == {("pairs.parquet", "limits.input_tokens")}
    assert all(r["tokens_before"] > 100 and r["chars_after"] < r["chars_before"] for r in cut)
    assert {r["chars_before"] for r in cut} == {len(rows["document"][i]) for i in long_at}
    status = run_here(None, "status", str(job), "--json")
    assert json.loads(status.stdout)["truncated_rows"] == 3


def test_a_rerank_output_is_refreshed_file_by_file(tmp_path, fake):
    data = tmp_path / "pairs"
    data.mkdir()
    first = _pairs_dataset(data / "a.parquet", n_queries=20, seed=3)
    second = _pairs_dataset(data / "b.parquet", n_queries=10, seed=4)
    second["qid"] = [f"b-{q}" for q in second["qid"]]
    second["did"] = [f"b-{d}" for d in second["did"]]
    pq.write_table(pa.table(second), data / "b.parquet", row_group_size=37)
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    # b.parquet changes (its queries reworded); c.parquet is new; a.parquet is untouched
    second["query"] = [q.replace("what about", "tell me about") for q in second["query"]]
    pq.write_table(pa.table(second), data / "b.parquet", row_group_size=37)
    third = _pairs_dataset(data / "c.parquet", n_queries=5, seed=5)
    third["qid"] = [f"c-{q}" for q in third["qid"]]
    third["did"] = [f"c-{d}" for d in third["did"]]
    pq.write_table(pa.table(third), data / "c.parquet", row_group_size=37)
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    asked = {r.body["query"] for r in fake.requests}
    assert asked == set(second["query"]) | set(third["query"])  # a.parquet is not scored again
    want = {**{(q, d): r for q, d, *r in _expected(first)}}
    want.update({(q, d): r for q, d, *r in _expected(second)})
    want.update({(q, d): r for q, d, *r in _expected(third)})
    got = {(q, d): r for q, d, *r in _got(read_output(tmp_path / "out"))}
    assert got == want
    assert run_here(fake, "verify", str(job)).returncode == 0


def _reworked(rows, edited):
    """``rows`` (pairs layout) with its queries in reverse order, each query's documents reversed, and the
    documents at ``edited`` rewritten: the same pairs but those, in another order."""
    rows = {k: list(v) for k, v in rows.items()}
    for i in edited:
        rows["document"][i] = f"rewritten {rows['document'][i]}"
    groups: dict[str, list[int]] = {}
    for i, qid in enumerate(rows["qid"]):
        groups.setdefault(qid, []).append(i)
    order = [i for qid in reversed(groups) for i in reversed(groups[qid])]
    return {k: [v[i] for i in order] for k, v in rows.items()}


def _two_files(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    first = _pairs_dataset(data / "a.parquet", n_queries=12, seed=3)
    second = _pairs_dataset(data / "b.parquet", n_queries=8, seed=4)
    second["qid"] = [f"b-{q}" for q in second["qid"]]
    second["did"] = [f"b-{d}" for d in second["did"]]
    pq.write_table(pa.table(second), data / "b.parquet", row_group_size=37)
    return data, first, second


def test_a_refresh_scores_only_the_pairs_the_output_does_not_hold(tmp_path, fake):
    data, first, second = _two_files(tmp_path)
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert "_pair_key" in pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).names
    edited = [0, 7, len(second["qid"]) - 1]
    changed = _reworked(second, edited)
    pq.write_table(pa.table(changed), data / "b.parquet", row_group_size=37)
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    scored = sorted(d for r in fake.requests for d in r.body["documents"])
    assert scored == sorted(f"rewritten {second['document'][i]}" for i in edited)  # only the new pairs
    want = {(q, d): r for q, d, *r in _expected(first)}
    want.update({(q, d): r for q, d, *r in _expected(changed)})
    assert {(q, d): r for q, d, *r in _got(read_output(tmp_path / "out"))} == want  # ranks over old and new
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["rows"]["reused_from_output"] == len(changed["qid"]) - len(edited)
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_an_output_written_without_pair_keys_is_refreshed_by_scoring_again(tmp_path, fake, monkeypatch):
    from batchembed.tasks.rerank import RerankTask

    data, first, second = _two_files(tmp_path)
    job = _job(tmp_path, fake, data)
    real_init = RerankTask.__init__

    def as_before_pair_keys(task, *args, **kwargs):
        real_init(task, *args, **kwargs)
        task.write_keys = False

    with monkeypatch.context() as patched:  # the first run writes shards as batchembed did before _pair_key
        patched.setattr(RerankTask, "__init__", as_before_pair_keys)
        assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    shards = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert all("_pair_key" not in pq.read_schema(s).names for s in shards)
    changed = _reworked(second, [0])
    pq.write_table(pa.table(changed), data / "b.parquet", row_group_size=37)
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sum(len(r.body["documents"]) for r in fake.requests) == len(changed["qid"])  # scored again, whole
    assert all("_pair_key" not in pq.read_schema(s).names for s in (tmp_path / "out").glob("part-*.parquet"))
    want = {(q, d): r for q, d, *r in _expected(first)}
    want.update({(q, d): r for q, d, *r in _expected(changed)})
    assert {(q, d): r for q, d, *r in _got(read_output(tmp_path / "out"))} == want
    assert run_here(fake, "verify", str(job)).returncode == 0  # the Delta table keeps one schema
