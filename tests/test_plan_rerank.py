"""`batchembed plan` for rerank jobs: queries, pairs, tokens and requests, checked against figures
computed independently here (as tests/test_plan.py does for embed jobs) and against a real run."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.job.config import load_job
from batchembed.plan import dry_run as plan_command
from batchembed.tasks.tokens import EstimateCounter
from tests.conftest import run_here, write_job
from tests.test_plan import greedy

LIMIT = 64  # limits.input_tokens
MAX_INPUTS, MAX_TOKENS = 4, 120  # limits.batch_inputs, limits.batch_tokens


def est(text: str) -> int:
    """EstimateCounter's starting estimate, computed by hand: ceil(bytes / 3) + 2."""
    return -(-len(text.encode("utf-8")) // 3) + 2


def make_groups(n: int, salt: str) -> list[tuple[str, str | None, list[str | None]]]:
    """(query id, query, documents) per query: blank queries and documents, long documents, 1..6 per query."""
    groups = []
    for g in range(n):
        query = "" if g % 11 == 3 else f"query {salt}{g} " + "q" * (g % 5)
        docs: list[str | None] = []
        for d in range(1 + g % 6):
            if d == 2 and g % 4 == 0:
                docs.append("  ")
            elif d == 3 and g % 5 == 0:
                docs.append(None)
            elif d == 0 and g % 7 == 1:
                docs.append(f"long {salt}{g} " + "z" * 300)  # query + document over LIMIT
            else:
                docs.append(f"doc {salt}{g}.{d} " + "w " * (d * 7 % 9))
        groups.append((f"{salt}{g}", query, docs))
    return groups


def expected(groups, policy: str = "truncate") -> dict:
    """The plan's figures, computed the slow, obvious way: one query's documents per request."""
    e = dict(queries=0, pairs=0, blank_pairs=0, too_long_pairs=0, pairs_to_score=0, tokens_to_send=0, requests=0)
    for _, query, docs in groups:
        e["queries"] += 1
        e["pairs"] += len(docs)
        costs = []
        for doc in docs:
            if not query.strip() or not (doc or "").strip():
                e["blank_pairs"] += 1
                continue
            cost = est(query) + est(doc)  # the query counted once per document, as the server sees it
            if cost > LIMIT:
                e["too_long_pairs"] += 1
                if policy != "truncate":
                    continue
                cost = LIMIT  # the document is cut to the query's remaining budget
            costs.append(cost)
        e["pairs_to_score"] += len(costs)
        e["tokens_to_send"] += sum(costs)
        e["requests"] += greedy(costs, MAX_INPUTS, MAX_TOKENS)
    return e


def write_pairs(path, groups) -> None:
    rows = {"qid": [], "query": [], "did": [], "document": []}
    for qid, query, docs in groups:
        for d, doc in enumerate(docs):
            rows["qid"].append(qid)
            rows["query"].append(query)
            rows["did"].append(f"{qid}-d{d}")
            rows["document"].append(doc)
    pq.write_table(pa.table(rows), path, row_group_size=29)


def rerank_job(tmp_path, data, base_url="http://127.0.0.1:9/v1", **overrides):
    sections = {
        "input": {"path": str(data)},
        "model": {"provider": "openai-compatible", "base_url": base_url, "name": "fake-reranker"},
        "limits": {
            "batch_inputs": MAX_INPUTS,
            "batch_tokens": MAX_TOKENS,
            "input_tokens": LIMIT,
            "requests_per_minute": 60,
            "tokens_per_minute": 6000,
        },
        "output": {"path": str(tmp_path / "out"), "shard_rows": 50},
        "rerank": {"layout": "pairs", "query": "query", "query_id": "qid", "document": "document", "doc_id": "did"},
    }
    for name, values in overrides.items():
        sections[name].update(values)
    return write_job(tmp_path / "rerank.toml", sections)


def run_plan(capsys, job_path, **kwargs) -> dict:
    assert plan_command.plan(load_job(job_path), EstimateCounter(), as_json=True, **kwargs) == 0
    return json.loads(capsys.readouterr().out)


def check(report: dict, want: dict) -> None:
    for key, value in want.items():
        assert report[key] == value, key


@pytest.fixture
def pairs_input(tmp_path):
    """Two files of (query, document) rows, 60 and 35 queries."""
    data = tmp_path / "in"
    data.mkdir()
    a, b = make_groups(60, "a"), make_groups(35, "b")
    write_pairs(data / "a.parquet", a)
    write_pairs(data / "b.parquet", b)
    return a + b, data


def test_rerank_plan_counts_pairs_queries_tokens_and_requests(tmp_path, capsys, pairs_input):
    groups, data = pairs_input
    report = run_plan(capsys, rerank_job(tmp_path, data), price_per_million=2.0)

    want = expected(groups)
    check(report, want)
    assert want["blank_pairs"] > 0 and want["too_long_pairs"] > 0 and want["requests"] > want["queries"]
    assert report["task"] == "rerank" and report["rows"] == want["pairs"]  # one row per pair
    assert report["tokens_to_send"] == report["tokens"]  # every pair is sent: no dedup
    assert (report["rows_to_embed"], report["unique_texts"], report["prefix"]) == (0, 0, "")
    rows_a = sum(len(d) for _, _, d in groups[:60])
    assert report["files"] == [
        {"name": "a.parquet", "format": "parquet", "rows": rows_a},
        {"name": "b.parquet", "format": "parquet", "rows": want["pairs"] - rows_a},
    ]
    # rows whose pair is not sent: blank query or document
    assert report["skipped_rows"] == want["blank_pairs"]
    assert report["estimated_cost_usd"] == pytest.approx(want["tokens_to_send"] / 1e6 * 2.0)
    minutes = max(want["requests"] / 60, want["tokens_to_send"] / 6000)
    assert report["eta_seconds"] == pytest.approx(minutes * 60)
    assert report["warnings"] == []


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_rerank_plan_leaves_out_too_long_pairs_under_skip_and_fail(tmp_path, capsys, pairs_input, policy):
    groups, data = pairs_input
    report = run_plan(capsys, rerank_job(tmp_path, data, limits={"on_too_long": policy}))

    want = expected(groups, policy="skip")
    check(report, want)
    assert report["skipped_rows"] == want["blank_pairs"] + want["too_long_pairs"]
    if policy == "skip":
        assert report["warnings"] == []
    else:
        (warning,) = report["warnings"]
        # the first long document: group 1 of a.parquet, its first row (group 0 has one row)
        assert "limits.on_too_long = 'fail'" in warning and "a.parquet row 1 " in warning
        assert f"({want['too_long_pairs']} pairs over {LIMIT} tokens" in warning


def test_rerank_plan_of_the_lists_layout(tmp_path, capsys):
    groups = make_groups(45, "l")
    src = tmp_path / "lists.parquet"
    table = pa.table(
        {
            "q": [query for _, query, _ in groups],
            "docs": pa.array([docs for _, _, docs in groups], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, src, row_group_size=10)
    rerank = {"layout": "lists", "query": "q", "query_id": None, "document": "docs", "doc_id": None}
    job = rerank_job(tmp_path, src, rerank=rerank)
    report = run_plan(capsys, job)

    want = expected(groups)
    check(report, want)
    assert report["rows"] == len(groups) == want["queries"]  # one row per query
    every_blank = sum(1 for _, q, docs in groups if not q.strip() or all(not (d or "").strip() for d in docs))
    assert report["skipped_rows"] == every_blank


def test_rerank_plan_human_output_and_preset_warning(tmp_path, capsys, pairs_input):
    groups, data = pairs_input
    assert plan_command.plan(load_job(rerank_job(tmp_path, data)), EstimateCounter()) == 0
    out = capsys.readouterr().out
    want = expected(groups)
    assert out.startswith("rerank plan for fake-reranker")
    assert f"queries          {want['queries']:,}" in out
    assert f"pairs to score   {want['pairs_to_score']:,}" in out
    assert f"requests         {want['requests']:,} (one query each" in out
    assert "unique texts" not in out and "rows to embed" not in out

    embedder = rerank_job(tmp_path, data, model={"provider": "openai", "name": "text-embedding-3-small"})
    assert "text-embedding-3-small is an embedding model, not a reranker" in run_plan(capsys, embedder)["warnings"]


def test_rerank_plan_predicts_what_a_run_sends(tmp_path, fake):
    groups = make_groups(50, "r")
    src = tmp_path / "pairs.parquet"
    write_pairs(src, groups)
    # limits high enough not to pace the run: packing depends on batch limits only
    fast = {"tokenizer": "estimate", "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000}
    job = rerank_job(tmp_path, src, base_url=fake.url, limits=fast)

    planned = run_here(None, "plan", str(job), "--json")  # the command, with the job's own counter
    assert planned.returncode == 0, planned.stderr
    report = json.loads(planned.stdout)
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr

    assert report["task"] == "rerank" and report["requests"] == len(fake.requests)
    assert report["pairs_to_score"] == sum(len(r.inputs) for r in fake.requests)
    assert report["queries"] == len(groups)
