"""Pure modules: batching invariants, retry policy table, config validation, token estimates, AIMD."""

from __future__ import annotations

import email.utils
import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchembed.errors import (
    AuthError,
    ConfigError,
    InputTooLong,
    PayloadTooLarge,
    TerminalAPIError,
    TransientAPIError,
    UsageError,
)
from batchembed.job.config import load_job
from batchembed.providers.openai_compat import parse_embeddings
from batchembed.providers.retry import backoff, classify, parse_retry_after
from batchembed.sending.limits import AdaptiveWindow, exhausted_for, parse_duration
from batchembed.tasks.batching import halves, pack
from batchembed.tasks.tokens import EstimateCounter

# ------------------------------------------------------------------------------------------ batching


@given(
    counts=st.lists(st.integers(min_value=1, max_value=500), max_size=400),
    max_inputs=st.integers(min_value=1, max_value=64),
    max_tokens=st.integers(min_value=1, max_value=3000),
)
def test_pack_covers_every_row_once_in_order_within_limits(counts, max_inputs, max_tokens):
    ranges = pack(np.array(counts, dtype=np.int64), max_inputs, max_tokens)
    flat = [i for a, b in ranges for i in range(a, b)]
    assert flat == list(range(len(counts)))  # every row exactly once, order kept
    for a, b in ranges:
        assert 1 <= b - a <= max_inputs
        total = sum(counts[a:b])
        assert total <= max_tokens or b - a == 1  # only a lone oversized row may exceed
    # greedy: no batch could have taken the next row
    for (a, b), (_c, _) in itertools.pairwise(ranges):
        assert b - a == max_inputs or sum(counts[a : b + 1]) > max_tokens


@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=2, max_value=1000))
def test_halves_split_a_range_into_two_nonempty_parts(start, length):
    (a, b), (c, d) = halves(start, start + length)
    assert a == start and b == c and d == start + length and a < b < d


# ------------------------------------------------------------------------------------------- retry

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "100000"}, 120.0),
        ({"Retry-After": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
        ({"Retry-After": "soon"}, None),
        ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected):
    got = parse_retry_after(headers, now=NOW)
    assert got == pytest.approx(expected, abs=0.01) if expected is not None else got is None


@pytest.mark.parametrize(
    ("status", "message", "code", "headers", "kind"),
    [
        (429, "slow down", None, {}, TransientAPIError),
        (429, "You exceeded your current quota", "insufficient_quota", {}, AuthError),
        (500, "", None, {}, TransientAPIError),
        (502, "", None, {}, TransientAPIError),
        (503, "overloaded", None, {}, TransientAPIError),
        (504, "", None, {}, TransientAPIError),
        (408, "", None, {}, TransientAPIError),
        (409, "", None, {}, TransientAPIError),
        (401, "bad key", None, {}, AuthError),
        (403, "forbidden", None, {}, AuthError),
        (404, "model not found", None, {}, AuthError),
        (402, "pay up", None, {}, AuthError),
        (413, "too large", None, {}, PayloadTooLarge),
        (424, "backend OOM", None, {}, PayloadTooLarge),
        (400, "This model's maximum context length is 8192 tokens", None, {}, InputTooLong),
        (400, "bad", "context_length_exceeded", {}, InputTooLong),
        (422, "Input validation error: inputs must have less than 512 tokens", None, {}, InputTooLong),
        (400, "unknown field foo", None, {}, TerminalAPIError),
        (500, "", None, {"x-should-retry": "false"}, TerminalAPIError),
        (418, "", None, {"x-should-retry": "true"}, TransientAPIError),
    ],
)
def test_classify_policy_table(status, message, code, headers, kind):
    error = classify(status, message, code, headers)
    assert type(error) is kind
    assert error.status == status


def test_backoff_honours_server_delay_and_grows_bounded():
    assert backoff(3, 2.5) == 2.5
    for attempt in range(12):
        delay = backoff(attempt, None)
        ceiling = min(0.5 * 2**attempt, 30.0)
        assert ceiling / 2 <= delay <= ceiling


# ------------------------------------------------------------------------------------------ config


def _job(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


BASE = '[input]\npath = "x.parquet"\n[output]\npath = "out"\n'


def test_config_defaults_and_overrides(tmp_path):
    job = load_job(_job(tmp_path, BASE), ["model.dimensions=256", "limits.concurrency=3", "input.keep=['a','b']"])
    assert job.model.dimensions == 256 and job.limits.concurrency == 3 and job.input.keep == ("a", "b")
    assert job.model.provider == "fireworks" and job.limits.batch_inputs == 256
    assert load_job(_job(tmp_path, BASE), ["model.name=accounts/me/deployedModels/x"]).model.name == (
        "accounts/me/deployedModels/x"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[limits]\nconcurrency = 'many'\n", "limits.concurrency must be an integer"),
        ("[limits]\nconcurency = 4\n", "unknown key limits.concurency"),
        ("[model]\nprovider = 'cohere'\n", "model.provider must be one of"),
        ("[limits]\nbatch_inputs = 0\n", "limits.batch_inputs must be at least 1"),
        ("[limits]\ninput_tokens = 9000\nbatch_tokens = 100\n", "cannot exceed limits.batch_tokens"),
        ("[model]\nprovider = 'openai-compatible'\n", "model.base_url is required"),
        ("[input2]\n", r"unknown section \[input2\]; did you mean 'input'\?"),
        ("[limits]\nmax_retries = true\n", "limits.max_retries must be an integer"),
    ],
)
def test_config_errors_name_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_job(_job(tmp_path, BASE + extra))


def test_malformed_override_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_job(_job(tmp_path, BASE), ["dimensions=3"])


# ------------------------------------------------------------------------------------------ tokens


def test_estimate_is_conservative_and_no_server_count_changes_it():
    # Issue 11: a server's usage (Infinity counts characters, ~5x tokens) must never change what is cut or
    # packed; it tunes pacing only (RateLimits.observe_usage).
    counter = EstimateCounter()
    texts = pa.array(["a" * 400, None, ""])
    first = counter.count(texts)
    assert list(first) == [136, 2, 2]
    for reported in (200, 20, 5 * 136):
        counter.observe(estimated=136, reported=reported)
        assert list(counter.count(texts)) == [136, 2, 2]


def test_estimate_truncates_on_character_boundaries():
    counter = EstimateCounter()
    text = "é" * 1000
    cut = counter.truncate(text, 50)
    assert text.startswith(cut) and counter.count(pa.array([cut]))[0] <= 50


# -------------------------------------------------------------------------------- response parsing


def test_parse_embeddings_maps_by_index_and_checks_shape():
    body = b'{"data":[{"index":1,"embedding":[1,2]},{"index":0,"embedding":[3,4]}],"usage":{"prompt_tokens":7}}'
    vectors, tokens = parse_embeddings(body, 2, None)
    assert vectors.tolist() == [[3, 4], [1, 2]] and tokens == 7
    from batchembed.errors import MalformedResponse

    for bad in (
        b'{"data":[{"index":0,"embedding":[1,2]}]}',
        b'{"data":[{"index":0,"embedding":[1,2]},{"index":0,"embedding":[1,2]}]}',
        b'{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[1]}]}',
        b'{"data":[{"index":0,"embedding":[1,NaN]},{"index":1,"embedding":[1,2]}]}',
        b"<html>",
    ):
        with pytest.raises(MalformedResponse):
            parse_embeddings(bad, 2, None)
    with pytest.raises(MalformedResponse):
        parse_embeddings(body, 2, 3)


# ------------------------------------------------------------------------------------------ limits


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_aimd_halves_on_throttle_once_per_second_and_grows_additively():
    clock = FakeClock()
    window = AdaptiveWindow(16, clock=clock)
    window.on_throttled(None)
    window.on_throttled(None)  # same burst: counted once
    assert window.current == 8
    clock.now = 2.0
    window.on_throttled(5.0)
    assert window.current == 4
    for _ in range(5):  # about one more slot per window's worth of successes
        window.on_success()
    assert window.current == 5
    for _ in range(1000):
        window.on_success()
    assert window.current == 16


def test_rate_limit_headers_pause_when_exhausted():
    assert parse_duration("6m0s") == 360 and parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2
    assert exhausted_for({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"}) == 1.5
    assert exhausted_for({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "1.5s"}) is None
    assert exhausted_for({}) is None


def test_window_pause_blocks_new_slots():
    import asyncio

    async def scenario():
        clock = FakeClock()
        window = AdaptiveWindow(2, clock=clock)
        window.pause(10)
        acquired = asyncio.Event()

        async def take():
            async with window.slot():
                acquired.set()

        task = asyncio.create_task(take())
        await asyncio.sleep(0)
        assert not acquired.is_set()
        clock.now = 11
        async with window._cond:
            window._cond.notify_all()
        await asyncio.wait_for(task, 2)
        assert acquired.is_set()

    asyncio.run(scenario())


def test_tokenizer_json_counts_exactly_and_truncates_token_accurately():
    from batchembed.providers.model_files import default_model_files
    from batchembed.tasks.tokens import HFTokenizerCounter

    counter = HFTokenizerCounter(str(default_model_files()[1]))
    text = "Tokenizers split unbelievably long words into several pieces. " * 40
    full = int(counter.count(pa.array([text]))[0])
    assert full > 300
    for limit in (5, 17, 64, 255):
        cut = counter.truncate(text, limit)
        assert text.startswith(cut)
        n = int(counter.count(pa.array([cut]))[0])
        assert limit - 2 <= n <= limit  # at most the limit, and nothing thrown away needlessly
    assert counter.truncate("short", 50) == "short"


@pytest.mark.parametrize("limit", [1, 2, 59, 60, 61, 600, 10_000, 600_000, 1_000_000_000])
def test_per_minute_bucket_never_exceeds_the_limit_in_any_minute(limit):
    from batchembed.sending.limits import per_minute_bucket

    bucket = per_minute_bucket(limit)
    rate = bucket.max_rate / bucket.time_period  # per second
    # the most a leaky bucket lets through in any 60 s: a full bucket plus 60 s of leaking
    assert bucket.max_rate + rate * 60 <= limit * (1 + 1e-9) or limit < 2
    assert rate * 60 >= 0.98 * limit or limit < 120  # and the steady rate stays close to the limit


def test_limiter_learns_what_the_server_counts():
    from batchembed.sending.limits import RateLimits

    limits = RateLimits(600, 600_000, 4)
    assert limits.charge_ratio == 1.0
    for _ in range(50):
        limits.observe_usage(estimated=1000, reported=800)
    assert limits.charge_ratio == pytest.approx(0.8)
    limits.observe_usage(estimated=1000, reported=900)  # the server counts more: charged at once
    assert limits.charge_ratio == pytest.approx(0.9)


def test_minute_log_holds_back_what_would_overfill_the_trailing_minute():
    from batchembed.sending.limits import MinuteLog

    log = MinuteLog(100)
    assert log.wait_for(60, now=0.0) == 0.0
    log.add(60, now=0.0)
    log.add(30, now=10.0)
    assert log.wait_for(10, now=20.0) == 0.0
    assert log.wait_for(40, now=20.0) == pytest.approx(40.0)  # the first charge leaves the window at 60
    assert log.wait_for(80, now=20.0) == pytest.approx(50.0)  # both must leave
    assert log.wait_for(40, now=61.0) == 0.0


def test_paced_limit_follows_announcements_and_aimd():
    from batchembed.sending.limits import AIMD_DECREASE, PacedLimit

    now = [0.0]
    pace = PacedLimit("tokens", 1_200_000, clock=lambda: now[0])
    pace.learn(600_000)  # the server's announcement wins over the configured limit
    assert (pace.value, pace.source) == (600_000, "server")
    assert pace.bucket.max_rate == 10_000  # rebuilt for the announced pace
    pace.learn(2_000_000)  # never above what the job was told
    assert (pace.value, pace.source) == (1_200_000, "configured")

    blind = PacedLimit("tokens", 1_200_000, clock=lambda: now[0])
    for _ in range(60):  # 600k accepted over the last 30 s, then a 429: the server's window is full
        now[0] += 0.5
        blind.accepted(10_000)
    blind.throttled(429)
    assert blind.source == "adaptive" and blind.value == pytest.approx(AIMD_DECREASE * 600_000)
    built = blind.bucket
    for _ in range(20):  # additive increase; the bucket follows once the drift is real (5%)
        blind.accepted(10_000)
    assert blind.bucket is built
    for _ in range(180):
        blind.accepted(10_000)
    assert blind.value == pytest.approx(AIMD_DECREASE * 600_000 + 0.02 * 2_000_000)
    assert blind.bucket is not built
    now[0] += 1  # within 5 s of the last cut: one burst of 429s counts once
    before = blind.value
    blind.throttled(429)
    assert blind.value == before
