"""`plan`'s ETA says what it rests on: the local model timed on this machine, or the limits a run will
pace to (the server's, when a previous run of the output learned them; else the configured ones)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.job.resolved import resolve_model
from batchembed.plan import eta
from tests.conftest import job_for, make_texts, run_here, write_job, write_parquet


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedModel:
    """A stand-in for the local model whose every token costs 1 ms of the injected clock."""

    model, threads = "stub-model", 3

    def __init__(self, clock: _Clock) -> None:
        self.clock, self.calls = clock, []

    def count_tokens(self, texts):
        return np.array([len(t.split()) for t in texts], np.int64)

    def encode(self, texts):
        counts = self.count_tokens(texts)
        self.calls.append(int(counts.sum()))
        self.clock.now += counts.sum() / 1000
        return np.zeros((len(texts), 4), np.float32), counts


def test_local_estimate_scales_the_measured_rate():
    clock = _Clock()
    model = _TimedModel(clock)
    texts = ["w " * 50] * 1000  # 50 tokens each: 1,000 tokens/s on the stub's clock

    est = eta.measure_local(model, texts, tokens_to_send=120_000, rows=6_000, clock=clock)

    assert est.seconds == pytest.approx(120.0)  # 120k tokens at 1k tokens/s
    assert (est.basis, est.bound) == ("measured", "cpu")
    assert "stub-model on 3 threads" in est.detail and "1,000 tokens/s" in est.detail and "50 rows/s" in est.detail
    # a warm-up of ~256 tokens, then one timed call of MEASURE_SECONDS at the warm-up's speed (at least 4,096 tokens)
    assert model.calls == [300, 4100]


def test_a_tiny_job_is_timed_on_what_there_is():
    clock = _Clock()
    est = eta.measure_local(_TimedModel(clock), ["a b c"], tokens_to_send=3, rows=1, clock=clock)
    assert est.seconds == pytest.approx(0.003)
    assert eta.measure_local(_TimedModel(clock), [], tokens_to_send=0, rows=0).seconds == 0


def test_local_plan_is_measured_on_this_machine(tmp_path):
    texts = [f"row {i}: the quick brown fox jumps over the lazy dog" for i in range(300)]
    pq.write_table(pa.table({"id": list(range(300)), "text": texts}), tmp_path / "in.parquet")
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(tmp_path / "in.parquet"), "id": "id"},
            "model": {"provider": "local", "threads": 1},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    plan = run_here(None, "plan", str(job), "--json")
    report = json.loads(plan.stdout)
    assert (report["eta_basis"], report["eta_bound"]) == ("measured", "cpu")
    assert report["eta_seconds"] > 0 and "on 1 thread " in report["eta_detail"]

    human = run_here(None, "plan", str(job)).stdout
    assert "ETA              about " in human and "measured just now on this machine" in human
    assert "requests/min" not in human  # a local model has no rate limits to speak of


def test_remote_plan_uses_the_configured_limits_and_says_so(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(200))
    job = job_for(tmp_path, fake, src, limits={"requests_per_minute": 600, "tokens_per_minute": 1_000_000})

    report = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    assert report["eta_basis"] == "configured"
    assert (report["requests_per_minute"], report["tokens_per_minute"]) == (600, 1_000_000)
    assert report["eta_seconds"] == pytest.approx(max(report["requests"] / 600, report["tokens_to_send"] / 1e6) * 60)
    human = run_here(None, "plan", str(job)).stdout
    assert "at least" in human and "600 requests/min and 1.0M tokens/min: the configured limits" in human


def test_remote_plan_uses_the_limits_a_previous_run_learned(tmp_path, fake):
    # the server announces 3M tokens/min (OpenAI headers); the job is told 5M: after one run, the plan
    # paces to the server's figure and says where it comes from
    fake.rate_limit(tpm=3_000_000)
    texts = make_texts(200)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"tokens_per_minute": 5_000_000, "requests_per_minute": 6000})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    report = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    assert report["eta_basis"] == "server"
    assert report["tokens_per_minute"] == pytest.approx(3_000_000, rel=0.02)
    assert report["requests_per_minute"] == 6000  # the server announced no request limit: the configured one
    human = run_here(None, "plan", str(job)).stdout
    assert "3.0M tokens/min: the server's limits, as the last run of this output learned them" in human


def test_learned_limits_only_take_the_servers_figures():
    report = {
        "limits": {
            "requests_per_minute": 600,
            "requests_per_minute_source": "configured",
            "tokens_per_minute": 90_000,
            "tokens_per_minute_source": "adaptive",
        }
    }
    assert eta.learned_limits(report) == (None, 90_000.0)
    assert eta.learned_limits(None) == (None, None)


def test_paced_never_exceeds_what_the_job_configures(tmp_path):
    from batchembed.job.config import load_job

    job = load_job(
        write_job(
            tmp_path / "j.toml",
            {"input": {"path": "x.parquet"}, "output": {"path": "out"}, "limits": {"tokens_per_minute": 50_000}},
        )
    )
    learned = {"limits": {"tokens_per_minute": 900_000, "tokens_per_minute_source": "server"}}
    est = eta.paced(resolve_model(job), requests=10, tokens=100_000, previous_report=learned)
    assert est.tokens_per_minute == 50_000 and est.seconds == pytest.approx(120.0) and est.bound == "tokens"


def test_local_rerank_plan_is_measured_too(tmp_path):
    docs = [f"document {i} on rivers and stones" for i in range(40)]
    pq.write_table(pa.table({"query": [f"q{i // 10}" for i in range(40)], "document": docs}), tmp_path / "p.parquet")
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(tmp_path / "p.parquet")},
            "model": {"provider": "local", "threads": 1},
            "output": {"path": str(tmp_path / "out")},
            "rerank": {"query": "query", "document": "document"},
        },
    )
    report = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    assert (report["task"], report["eta_basis"], report["pairs_to_score"]) == ("rerank", "measured", 40)
    assert report["eta_seconds"] > 0 and "embedded " in report["eta_detail"]
