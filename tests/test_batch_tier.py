"""The batch tier (``[model] tier = "batch"``) against the fake batch API, in-process: the same output as the
online tier, every distinct text bought once, resubmission of unanswered lines, queue limits, --no-wait,
cancel, status, and the providers' shapes (OpenAI, Mistral, Voyage embed and rerank)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.exitcodes import ExitCode
from batchembed.run.batch import loop as batch_loop
from batchembed.testing import expected_score
from batchembed.testing.batchapi import FakeBatchProvider
from tests.conftest import assert_vectors, cli_env, make_texts, read_output, run_here, write_job, write_parquet

ENV = cli_env(OPENAI_API_KEY="sk-test", MISTRAL_API_KEY="m-test", VOYAGE_API_KEY="v-test")


def batch_job(tmp_path: Path, fake, texts: list, provider: str = "openai", **model) -> Path:
    """A batch-tier job over ``texts`` against ``fake`` (batches of at most 120 inputs, no poll wait)."""
    inp = write_parquet(tmp_path / "in.parquet", texts)
    settings = {
        "provider": provider,
        "base_url": fake.url,
        "name": "fake",
        "tier": "batch",
        "batch_poll_seconds": 0,
        "batch_inputs": 120,
        **model,
    }
    return write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(inp), "text": "text", "id": "id"},
            "model": settings,
            "limits": {"batch_inputs": 32, "max_retries": 2},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 200},
        },
    )


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "_report.json").read_text())


def test_batch_run_writes_the_online_output_and_buys_each_distinct_text_once(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.reorder = True  # answers' data reversed inside a line; the fake also lists lines out of order
    texts = make_texts(500) + make_texts(150)  # 150 rows repeat earlier texts
    job = batch_job(tmp_path, fake, texts)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    table = read_output(tmp_path / "out")
    assert table.num_rows == 650
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(set(texts))  # every distinct text billed exactly once
    assert fake.requests == []  # nothing went to the online endpoint
    assert len(fake.created) == 5  # 500 inputs in batches of at most 120 inputs (4 requests of 32 + rest)
    assert all(c["inputs"] <= 120 for c in fake.created)
    batch = report(tmp_path)["batch"]
    assert batch["batches_created"] == 5 and batch["items_billed"] == 500 and batch["still_running"] == 0
    assert batch["price_share_of_online"] == 0.5
    assert report(tmp_path)["tokens"] == batch["tokens_billed"] > 0  # the summary's tokens are the ones billed
    assert run_here(None, "verify", str(job), env=ENV).returncode == 0
    # a finished job keeps only the ledger's states (the texts and answers are in the shards now)
    assert not list((tmp_path / "out" / "_batch").rglob("*.parquet"))
    again = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert again.returncode == 0 and "already complete" in again.stderr and len(fake.created) == 5


def test_expired_lines_are_submitted_again_and_billed_once(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.expire_next = 3  # three lines of the first batch to end expire
    texts = make_texts(300)
    job = batch_job(tmp_path, fake, texts)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "submitted again (attempt 1 of 2)" in r.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(texts)
    assert report(tmp_path)["batch"]["resubmissions"] == 1


def test_lines_expired_past_the_limit_fail_or_go_online(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.expire_next = 10**6  # nothing is ever answered
    texts = make_texts(50)
    job = batch_job(tmp_path, fake, texts, batch_resubmits=1)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == ExitCode.PARTIAL, r.stderr
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet")
    assert failed.num_rows == 50 and "batch_expired" in failed.column("error")[0].as_py()
    assert len(fake.created) == 2  # the first batch and one resubmission

    fake2 = FakeBatchProvider(dim=16)
    fake2.expire_next = 10**6
    (tmp_path / "b").mkdir()
    job2 = batch_job(tmp_path / "b", fake2, texts, batch_resubmits=1, batch_fallback="online")
    r = run_here(fake2, "run", str(job2), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert sorted(fake2.received_texts()) == sorted(texts)  # sent through the online endpoint instead
    assert_vectors(read_output(tmp_path / "b" / "out"), dict(enumerate(texts)), 16)
    assert report(tmp_path / "b")["batch"]["rows_sent_online"] == 50


def test_a_bad_input_fails_alone(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(100)
    fake.poison = {texts[7]}  # its line gets a 400: its 31 neighbours are sent again one per line
    job = batch_job(tmp_path, fake, texts)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == ExitCode.PARTIAL, r.stderr
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet")
    assert failed.column("id").to_pylist() == ["7"]
    table = read_output(tmp_path / "out")
    assert table.num_rows == 99
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(t for t in texts if t != texts[7])


def test_queue_limits_wait_and_submit_again(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.refuse_creations = 2  # two 429s at creation
    fake.quota_failures = 1  # one batch created, then failed with token_limit_exceeded
    texts = make_texts(400)
    job = batch_job(tmp_path, fake, texts, batch_queue_inputs=250)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "queue is full" in r.stderr and "token_limit_exceeded" in r.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(texts)
    refused = [c for c in fake.created if c["quota"]]
    assert len(refused) == 1 and report(tmp_path)["batch"]["batches_refused_over_quota"] == 1
    # never more than batch_queue_inputs enqueued: each creation found room for it beside the running ones
    assert max(c["enqueued"] + c["inputs"] for c in fake.created) <= 250


@pytest.mark.parametrize(
    ("provider", "no_metadata"), [("openai", False), ("mistral", False), ("voyage", False), ("openai", True)]
)
def test_a_kill_between_create_and_record_finds_the_batch_on_the_paged_list(
    tmp_path, monkeypatch, provider, no_metadata
):
    fake = FakeBatchProvider(dim=16, shape=provider)
    fake.page_size = 2  # the batch sought sits on a later page of the list
    fake.drop_metadata = no_metadata  # then it is known by its input file, the second key
    texts = make_texts(500)
    job = batch_job(tmp_path, fake, texts, provider=provider)
    real = batch_loop.failpoint
    seen = []

    def crash(name: str) -> None:
        if name == "batch-after-create":
            seen.append(name)
            if len(seen) == 3:  # the third batch is created, its id never recorded
                raise RuntimeError("killed between create and record")
        real(name)

    monkeypatch.setattr(batch_loop, "failpoint", crash)
    with pytest.raises(RuntimeError):
        run_here(fake, "run", str(job), "--quiet", env=ENV)
    monkeypatch.setattr(batch_loop, "failpoint", real)
    assert len(fake.created) == 3
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "found batch batch_" in r.stderr  # the third batch found on the list, not created again
    tags = [c["metadata"]["batchembed_piece"] for c in fake.created]  # (as sent)
    assert len(tags) == len(set(tags)) == 5
    assert sorted(fake.billed_texts) == sorted(texts)
    assert run_here(None, "verify", str(job), env=ENV).returncode == 0


def test_no_wait_exits_75_while_batches_run_and_cancel_stops_them(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.hold_batches = True
    texts = make_texts(300)
    job = batch_job(tmp_path, fake, texts)
    r = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert r.returncode == ExitCode.BATCHES_RUNNING == 75, r.stderr
    assert "still running" in r.stderr and not (tmp_path / "out" / "_SUCCESS").exists()
    status = json.loads(run_here(None, "status", str(job), "--json", env=ENV).stdout)
    assert status["batches"]["running"] == 3 and status["batches"]["pieces"][0]["step"] == "running"
    assert "batches:" in run_here(None, "status", str(job), env=ENV).stdout
    again = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert again.returncode == 75 and len(fake.created) == 3  # nothing created twice

    c = run_here(fake, "cancel", str(job), env=ENV)
    assert c.returncode == 0 and "cancel 3 batches" in c.stderr
    fake.hold_batches = False
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)  # collects the cancelled, submits them again
    assert r.returncode == 0, r.stderr
    assert len(fake.created) == 6 and sorted(fake.billed_texts) == sorted(texts)
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)


def test_no_wait_commits_the_units_whose_batches_are_done(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(400)
    job = batch_job(tmp_path, fake, texts)
    fake.hold_batches = True
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    fake.finish_all([c["id"] for c in fake.created[:2]])  # texts 0..239: the first unit's 200 rows
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    assert read_output(tmp_path / "out").column("id").to_pylist() == list(range(200))
    assert json.loads(run_here(None, "status", str(job), "--json", env=ENV).stdout)["rows_done"] == 200
    fake.finish_all()
    r = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert r.returncode == 0, r.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)


@pytest.mark.parametrize("provider", ["mistral", "voyage"])
def test_mistral_and_voyage_shapes(tmp_path, provider):
    fake = FakeBatchProvider(dim=16, shape=provider)
    fake.expire_next = 2
    texts = make_texts(260)
    job = batch_job(tmp_path, fake, texts, provider=provider, dimensions=8)
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)
    assert sorted(fake.billed_texts) == sorted(texts)
    if provider == "voyage":
        assert report(tmp_path)["batch"]["price_share_of_online"] == 0.67


def test_rerank_in_batch_on_voyage(tmp_path):
    fake = FakeBatchProvider(dim=16, shape="voyage")
    queries = [f"query {i % 7}" for i in range(120)]
    docs = make_texts(120)
    table = pa.table({"query": sorted(queries), "document": docs})
    pq.write_table(table, tmp_path / "pairs.parquet")
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(tmp_path / "pairs.parquet")},
            "model": {
                "provider": "voyage",
                "base_url": fake.url,
                "name": "rerank-2",
                "tier": "batch",
                "batch_poll_seconds": 0,
            },
            "rerank": {"layout": "pairs", "top_n": 3, "return_documents": True},
            "limits": {"batch_inputs": 16},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    out = read_output(tmp_path / "out")
    assert out.num_rows == 7 * 3
    columns = (out.column(c).to_pylist() for c in ("query_id", "document", "score"))
    for q, d, s in zip(*columns, strict=True):
        assert s == pytest.approx(expected_score(q, d), abs=1e-6)
    assert len(fake.billed_texts) == 120 and fake.requests == []


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"provider": "fireworks"}}, "Fireworks has no batch API"),
        ({"model": {"provider": "local"}}, "has none"),
        ({"model": {"provider": "openai"}, "rerank": {"layout": "pairs"}}, "only Voyage"),
    ],
)
def test_batch_tier_refused_where_there_is_none(tmp_path, sections, message):
    inp = write_parquet(tmp_path / "in.parquet", ["a", "b"])
    spec = {"input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out")}}
    for name, values in sections.items():
        spec[name] = {**values, **({"tier": "batch"} if name == "model" else {})}
    job = write_job(tmp_path / "job.toml", spec)
    r = run_here(None, "run", str(job), env=ENV)
    assert r.returncode == ExitCode.FAILED and message in r.stderr


def test_no_wait_is_for_the_batch_tier(tmp_path):
    inp = write_parquet(tmp_path / "in.parquet", ["a"])
    job = write_job(tmp_path / "job.toml", {"input": {"path": str(inp)}, "output": {"path": str(tmp_path / "o")}})
    r = run_here(None, "run", str(job), "--no-wait", env=ENV)
    assert r.returncode == ExitCode.USAGE and "tier" in r.stderr


def test_plan_shows_the_batch_price_next_to_the_online_price(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(300) + make_texts(50)
    job = batch_job(tmp_path, fake, texts, price_per_million_tokens=0.02)
    r = run_here(None, "plan", str(job), "--json", env=ENV)
    doc = json.loads(r.stdout)
    assert doc["tier"] == "batch" and doc["batch_price_share"] == 0.5 and doc["batches"] == 3  # 300 / 120
    assert doc["estimated_batch_cost_usd"] == pytest.approx(doc["estimated_cost_usd"] / 2)
    text = run_here(None, "plan", str(job), env=ENV).stdout
    assert "batch tier" in text and "50% of online" in text and "<- this job" in text
    fw = write_job(
        tmp_path / "fw.toml",
        {"input": {"path": str(tmp_path / "in.parquet")}, "output": {"path": str(tmp_path / "o2")}},
    )
    assert "Fireworks has no batch API" in run_here(None, "plan", str(fw), env=ENV).stdout


def test_restart_cancels_the_running_batches_and_starts_over(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.hold_batches = True
    texts = make_texts(200)
    job = batch_job(tmp_path, fake, texts)
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    fake.hold_batches = False
    r = run_here(fake, "run", str(job), "--quiet", "--restart", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "cancelled 2 batches of the earlier run" in r.stderr
    assert len(fake.created) == 4
    first = [c["id"] for c in fake.created[:2]]
    assert all(fake.batches[b]["ended"] == "cancelling" for b in first)  # the provider ends them itself
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)


def test_dimensions_cut_here_when_the_job_says_client(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(100)
    job = batch_job(tmp_path, fake, texts, dimensions=8, dimensions_by="client")
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type.list_size == 8
    first = table.column("embedding")[0].values.to_numpy()
    assert abs(float((first**2).sum()) - 1.0) < 1e-5  # cut and L2-normalised again


def test_a_server_ignoring_dimensions_stops_the_job_without_buying_again(tmp_path):
    fake = FakeBatchProvider(dim=16)
    fake.ignore_dimensions = True  # answers 16 dimensions whatever is asked
    texts = make_texts(100)
    job = batch_job(tmp_path, fake, texts, dimensions=8)
    for _ in range(2):
        r = run_here(fake, "run", str(job), "--quiet", env=ENV)
        assert r.returncode == ExitCode.FAILED and "model.dimensions" in r.stderr
    assert len(fake.created) == 1 and fake.inputs_billed == 100  # never submitted again


def test_rows_the_batches_failed_are_bought_again_by_the_next_run(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(150)
    job = batch_job(tmp_path, fake, texts, batch_resubmits=0)
    fake.expire_next = 5  # every line of the first run (4 + 1) expires, and no resubmission is allowed
    assert run_here(fake, "run", str(job), "--quiet", env=ENV).returncode == ExitCode.PARTIAL
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet").num_rows
    assert failed == 150
    r = run_here(fake, "run", str(job), "--quiet", env=ENV)  # retries _failed.parquet's rows: in a new batch
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "out" / "_failed.parquet").exists()
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(texts) and fake.requests == []


def test_a_batch_job_is_not_split_over_shards(tmp_path):
    fake = FakeBatchProvider(dim=16)
    job = batch_job(tmp_path, fake, make_texts(10))
    r = run_here(fake, "run", str(job), "--shard", "0/2", env=ENV)
    assert r.returncode == ExitCode.USAGE and "runs in one process" in r.stderr and fake.created == []


def test_the_vector_cache_serves_a_second_batch_job_without_a_batch(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(200)
    cache = str(tmp_path / "vectors.sqlite")
    job = batch_job(tmp_path, fake, texts)
    with job.open("a") as f:
        f.write(f'[cache]\npath = "{cache}"\n')
    assert run_here(fake, "run", str(job), "--quiet", env=ENV).returncode == 0
    assert len(fake.created) == 2
    other = tmp_path / "other.toml"
    other.write_text(job.read_text().replace(str(tmp_path / "out"), str(tmp_path / "out2")))
    r = run_here(fake, "run", str(other), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert len(fake.created) == 2 and fake.requests == []  # every text from the cache: no batch, no request
    assert_vectors(read_output(tmp_path / "out2"), dict(enumerate(texts)), 16)
