"""`batchembed plan`: the dry run's counts, checked against figures computed independently here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchembed.errors import ConfigError, InputError
from batchembed.job.config import load_job
from batchembed.plan import dry_run as plan_command
from batchembed.plan import seen as seen_texts
from batchembed.plan.report import duration
from batchembed.tasks.memo import text_keys
from batchembed.tasks.tokens import EstimateCounter
from tests.conftest import job_for, run_here, toml_value, write_parquet

SHARD = 500  # shard_rows below CHUNK_ROWS: every chunk is exactly one 500-row unit of one file
LIMIT = 64  # limits.input_tokens


def est(text: str) -> int:
    """EstimateCounter's starting estimate, computed by hand: ceil(bytes / 3) + 2."""
    return -(-len(text.encode("utf-8")) // 3) + 2


def make_rows(n: int, salt: str) -> list[str | None]:
    rows: list[str | None] = []
    for i in range(n):
        if i % 97 == 1:
            rows.append(None if salt == "p" else "")
        elif i % 89 == 2:
            rows.append("")
        elif i % 83 == 3:
            rows.append("  \t ")
        elif i % 250 == 4:
            rows.append("long shared " + "y" * 400)  # one long text, repeated across chunks and files
        elif i % 50 == 5:
            rows.append(f"long {salt}{i} " + "x" * (200 + i % 40))
        elif i % 7 == 0:
            rows.append(f"dup {i % 21}")  # duplicates within a chunk, across chunks and across files
        else:
            rows.append(f"text {salt}{i} " + "word " * (i % 13))
    return rows


def write_inputs(tmp_path) -> tuple[list[list[str | None]], str]:
    """a.parquet (1700 rows, small row groups) and b.csv (900 rows) in one directory."""
    data = tmp_path / "in"
    data.mkdir()
    a, b = make_rows(1700, "p"), make_rows(900, "c")
    write_parquet(data / "a.parquet", a, row_group_size=300)
    pacsv.write_csv(pa.table({"id": [f"c{i}" for i in range(len(b))], "text": b}), data / "b.csv")
    return [a, b], str(data)


def write_toml(tmp_path, data: str, **sections) -> str:
    base = {
        "input": {"path": data, "text": "text", "id": "id"},
        "model": {"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "name": "fake"},
        "limits": {
            "batch_inputs": 16,
            "batch_tokens": 300,
            "input_tokens": LIMIT,
            "requests_per_minute": 60,
            "tokens_per_minute": 6000,
        },
        "output": {"path": str(tmp_path / "out"), "shard_rows": SHARD},
    }
    for name, values in sections.items():
        base[name].update(values)
    lines = []
    for section, values in base.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def greedy(counts: list[int], max_inputs: int, max_tokens: int) -> int:
    """Requests needed to send ``counts`` in order, as many per request as fit (one alone if too big)."""
    requests, n, total = 0, 0, 0
    for c in counts:
        if n and (n == max_inputs or total + c > max_tokens):
            requests, n, total = requests + 1, 0, 0
        n, total = n + 1, total + c
    return requests + (1 if n else 0)


def expected(files, prefix="", policy="truncate", max_inputs=16, max_tokens=300, limit=LIMIT) -> dict:
    """The plan's figures, computed the slow, obvious way."""
    e = dict(rows=0, blank_rows=0, too_long_rows=0, rows_to_embed=0, tokens=0, tokens_to_send=0, requests=0)
    distinct: dict[str, int] = {}
    for rows in files:
        e["rows"] += len(rows)
        for start in range(0, len(rows), SHARD):
            block = rows[start : start + SHARD]
            texts = [prefix + t for t in block if t is not None and t.strip()]
            e["blank_rows"] += len(block) - len(texts)
            e["too_long_rows"] += sum(est(t) > limit for t in texts)
            if policy == "skip":
                texts = [t for t in texts if est(t) <= limit]
            cost = {t: min(est(t), limit) if policy == "truncate" else est(t) for t in texts}
            e["rows_to_embed"] += len(texts)
            e["tokens"] += sum(cost[t] for t in texts)
            uniq = [t for t in dict.fromkeys(texts) if t not in distinct]  # first occurrences job-wide
            e["tokens_to_send"] += sum(cost[t] for t in uniq)
            e["requests"] += greedy([cost[t] for t in uniq], max_inputs, max_tokens)
            distinct.update({t: cost[t] for t in uniq})
    e["unique_texts"] = len(distinct)
    e["unique_tokens"] = sum(distinct.values())
    return e


def run_plan(capsys, job_path: str, **kwargs) -> dict:
    job = load_job(job_path)
    assert plan_command.plan(job, EstimateCounter(), as_json=True, **kwargs) == 0
    return json.loads(capsys.readouterr().out)


def check(report: dict, want: dict) -> None:
    for key, value in want.items():
        assert report[key] == value, key


def test_plan_counts_parquet_and_csv(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    report = run_plan(capsys, write_toml(tmp_path, data), price_per_million=0.5)

    want = expected(files)
    check(report, want)
    assert want["rows"] == 2600 and want["blank_rows"] > 0 and want["too_long_rows"] > 0
    assert want["tokens_to_send"] < want["tokens"] and want["unique_tokens"] == want["tokens_to_send"]
    assert report["files"] == [
        {"name": "a.parquet", "format": "parquet", "rows": 1700},
        {"name": "b.csv", "format": "csv", "rows": 900},
    ]
    assert report["skipped_rows"] == want["blank_rows"]
    assert report["tokens_saved_by_dedup"] == want["tokens"] - want["tokens_to_send"]
    assert (report["model"], report["preset"], report["prefix"]) == ("fake", None, "")
    assert (report["batch_inputs"], report["batch_tokens"], report["input_tokens"]) == (16, 300, LIMIT)
    # cost and ETA arithmetic
    assert report["price_source"] == "argument"
    assert report["estimated_cost_usd"] == pytest.approx(want["tokens_to_send"] / 1e6 * 0.5)
    minutes = max(want["requests"] / 60, want["tokens_to_send"] / 6000)
    assert report["eta_seconds"] == pytest.approx(minutes * 60)
    assert report["eta_bound"] == ("tokens" if want["tokens_to_send"] / 6000 > want["requests"] / 60 else "requests")
    assert report["warnings"] == []


def test_plan_with_prefix_skip_policy_and_batch_limits(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    job = write_toml(
        tmp_path,
        data,
        input={"prefix": "p: "},
        limits={"on_too_long": "skip", "batch_inputs": 5, "batch_tokens": 1000},
    )
    report = run_plan(capsys, job)

    want = expected(files, prefix="p: ", policy="skip", max_inputs=5, max_tokens=1000)
    check(report, want)
    assert report["prefix"] == "p: "
    assert report["skipped_rows"] == want["blank_rows"] + want["too_long_rows"]
    assert report["rows_to_embed"] == want["rows"] - report["skipped_rows"]
    assert report["estimated_cost_usd"] is None and report["price_source"] is None


def test_query_role_gets_the_qwen3_instruction(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    job = write_toml(tmp_path, data, input={"role": "query", "instruction": "Find it"})
    report = run_plan(capsys, job)
    prefix = "Instruct: Find it\nQuery:"
    assert report["prefix"] == prefix
    check(report, expected(files, prefix=prefix))


def test_catalog_model_price_and_dimension_check(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    openai = {"provider": "openai", "name": "text-embedding-3-small"}  # no key needed: nothing is sent
    job = write_toml(tmp_path, data, model={**openai, "dimensions": 256})
    report = run_plan(capsys, job)
    assert report["preset"] == "text-embedding-3-small" and report["dimensions"] == 256
    assert report["price_source"] == "catalog" and report["price_per_million_tokens"] == 0.02
    assert report["estimated_cost_usd"] == pytest.approx(expected(files)["tokens_to_send"] / 1e6 * 0.02)
    # an explicit price wins over the catalogue's
    assert run_plan(capsys, job, price_per_million=1.0)["price_source"] == "argument"

    bad = write_toml(tmp_path, data, model={**openai, "dimensions": 2000})
    with pytest.raises(ConfigError, match=r"model\.dimensions.*1\.\.1536"):
        plan_command.plan(load_job(bad), EstimateCounter())
    # through an OpenAI-compatible server the same name is not checked: that server decides
    proxied = write_toml(tmp_path, data, model={"name": "text-embedding-3-small", "dimensions": 2000})
    assert run_plan(capsys, proxied)["dimensions"] == 2000


def test_nomic_document_prefix_and_context_warning(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    job = write_toml(tmp_path, data, model={"name": "nomic-ai/nomic-embed-text-v1.5"}, limits={"input_tokens": 100})
    report = run_plan(capsys, job)
    assert report["prefix"] == "search_document: "
    check(report, expected(files, prefix="search_document: ", limit=100))
    assert report["warnings"] == []  # 100 <= nomic's 8192
    job = write_toml(tmp_path, data, model={"name": "BAAI/bge-small-en-v1.5"}, limits={"input_tokens": 300})
    assert run_plan(capsys, job)["warnings"] == []  # 300 <= bge's 512
    job = write_toml(
        tmp_path, data, model={"name": "BAAI/bge-small-en-v1.5"}, limits={"input_tokens": 1000, "batch_tokens": 2000}
    )
    (warning,) = run_plan(capsys, job)["warnings"]
    assert "limits.input_tokens = 1000" in warning and "512" in warning


def test_fail_policies_are_reported_not_raised(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    job = write_toml(tmp_path, data, input={"on_empty": "fail"}, limits={"on_too_long": "fail"})
    report = run_plan(capsys, job)
    want = expected(files, policy="fail")
    check(report, want)
    blank_warning, long_warning = report["warnings"]
    assert "input.on_empty = 'fail'" in blank_warning and "a.parquet row 1" in blank_warning
    assert "limits.on_too_long = 'fail'" in long_warning and "a.parquet row 4" in long_warning


def test_human_output(tmp_path, capsys):
    files, data = write_inputs(tmp_path)
    job = load_job(write_toml(tmp_path, data))
    assert plan_command.plan(job, EstimateCounter()) == 0
    out = capsys.readouterr().out
    want = expected(files)
    assert "nothing is sent" in out
    assert f"rows             {want['rows']:,}" in out
    assert f"requests         {want['requests']:,}" in out
    assert f"tokens to send   {want['tokens_to_send']:,}" in out
    assert "estimated cost   unknown" in out
    assert "ETA              at least " in out


def test_missing_column_is_an_input_error(tmp_path):
    _, data = write_inputs(tmp_path)
    job = load_job(write_toml(tmp_path, data, input={"text": "{title} {text}"}))
    with pytest.raises(InputError, match="title"):
        plan_command.plan(job, EstimateCounter())


def test_duration_text():
    assert duration(0) == "0s"
    assert duration(59.2) == "1m 00s"
    assert duration(3600 * 5 + 61) == "5h 01m"
    assert duration(86400 * 3 + 3600) == "3d 01h"


def test_seen_set_compaction_is_exact(monkeypatch):
    monkeypatch.setattr(seen_texts, "COMPACT_EVERY", 2)
    seen = seen_texts.SeenTexts()
    arr = ["a", "b", "a", "c", "d", "b", "e"]
    firsts = [
        bool(seen.first_seen(seen_texts.text_digests(text_keys([arr[i]])), np.array([i + 1]))[0])
        for i in range(len(arr))
    ]
    assert firsts == [True, True, False, True, True, False, True]
    assert len(seen) == 5
    assert seen.tokens == 1 + 2 + 4 + 5 + 7  # first occurrence of each text keeps its count


def test_plan_predicts_what_a_run_sends(tmp_path, capsys, fake):
    """Inputs per request are the binding limit, so the estimate's calibration cannot change packing."""
    texts = [f"row {i % 700} " + "z" * (i % 30) if i % 41 else "" for i in range(2300)]
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=333)
    job_path = job_for(
        tmp_path, fake, src, limits={"batch_inputs": 32, "batch_tokens": 100_000}, output={"shard_rows": 1000}
    )
    report = run_plan(capsys, str(job_path))
    result = run_here(fake, "run", str(job_path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert report["requests"] == len(fake.requests)
    assert report["rows_to_embed"] == sum(1 for t in texts if t)
    assert sorted(fake.received_texts()) == sorted({t for t in texts if t})  # each distinct text once
    assert report["unique_texts"] == len({t for t in texts if t})
    assert pq.read_metadata(src).num_rows == report["rows"]


def test_a_filled_vector_cache_does_not_change_the_plan(tmp_path, capsys, fake):
    """The plan's task gets an empty memo: what a cache file holds never hides a text from the figures."""
    texts = [f"cached text {i % 300}" for i in range(1000)]
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=250)
    job_path = str(job_for(tmp_path, fake, src, cache={"path": str(tmp_path / "vectors.sqlite")}))
    before = run_plan(capsys, job_path)
    result = run_here(fake, "run", job_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vectors.sqlite").stat().st_size > 0  # the run filled the cache
    # the whole job planned again (`plan --restart`: the output's own vectors aside), the cache filled
    assert run_plan(capsys, job_path, restart=True) == before
    assert (before["unique_texts"], before["rows_to_embed"]) == (300, 1000)
    assert before["requests"] == len(fake.requests)
