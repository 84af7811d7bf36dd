"""No token paid twice: duplicates within a run, and the cross-run cache."""

from __future__ import annotations

import json

from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here, write_parquet


def test_duplicates_across_chunks_are_embedded_once(tmp_path, fake):
    distinct = make_texts(150)
    texts = [distinct[i % 150] for i in range(10_000)]  # spans three 4096-row chunks
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=1000)
    job = job_for(tmp_path, fake, src, output={"shard_rows": 3000}, limits={"concurrency": 1})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted(distinct)
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["tokens_saved_by_dedup"] > 0
    assert report["rows"]["embedded"] == 10_000


def test_cache_makes_a_rerun_pay_only_for_changed_rows(tmp_path, fake):
    texts = make_texts(500)
    src = write_parquet(tmp_path / "in.parquet", texts)
    cache = tmp_path / "cache" / "vectors.sqlite"
    job = job_for(tmp_path, fake, src, cache={"path": str(cache)})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert len(fake.received_texts()) == 500

    changed = list(texts)
    for i in (3, 250, 499):
        changed[i] = f"changed text {i}"
    write_parquet(src, changed)
    fake.reset_records()
    result = run_here(fake, "run", str(job), "--quiet", "--restart")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted(changed[i] for i in (3, 250, 499))
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(changed)), 16)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["tokens_saved_by_dedup"] > 0


def test_cache_is_keyed_by_dimensions(tmp_path, fake):
    texts = make_texts(50)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, cache={"path": str(tmp_path / "c.sqlite")})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    fake.reset_records()
    result = run_here(fake, "run", str(job), "--quiet", "--restart", "--set", "model.dimensions=8")
    assert result.returncode == 0, result.stderr
    assert len(fake.received_texts()) == 50  # other dimensions: nothing reused
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)


def test_plan_sends_nothing_and_counts(tmp_path, fake):
    texts = [*make_texts(300), None, ""]
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"price_per_million_tokens": 2.0})
    result = run_here(fake, "plan", str(job), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 302 and fake.requests == []
    assert report["estimated_cost_usd"] is not None
