"""The ServerWatch's rules on a stepped clock (no network): when a failure is the address's fault, when it
is an outage, what is said, and when the run gives up."""

from __future__ import annotations

import pytest

from batchembed.errors import NoAnswer, ServerUnreachable, TransientAPIError
from batchembed.sending.outage import ServerWatch

URL = "http://user:pw@embed.internal:8080/v1?key=secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(clock: Clock, lines: list[str], expired: list[str], **windows) -> ServerWatch:
    settings = {"connect_timeout": 30.0, "outage_seconds": 300.0, **windows}
    return ServerWatch(URL, say=lines.append, on_expired=expired.append, clock=clock, wall=clock, **settings)


def refused() -> NoAnswer:
    return NoAnswer("connection failed", "refused", URL)


def test_before_the_first_answer_a_refusal_is_named_retried_then_given_up_on():
    clock, lines, expired = Clock(), [], []
    w = watch(clock, lines, expired)
    delay = w.failed(refused(), "canary", 0)
    assert 0 < delay <= 5
    assert "embed.internal:8080" in lines[0] and "connection refused" in lines[0] and "model.base_url" in lines[0]
    assert "pw" not in lines[0] and "secret" not in lines[0]
    clock.now += 31
    with pytest.raises(ServerUnreachable, match=r"could not reach the server at embed\.internal:8080"):
        w.failed(refused(), "canary", 1)


def test_after_an_answer_one_slow_request_is_its_own_trouble_but_two_failing_are_an_outage():
    clock, lines, expired = Clock(), [], []
    w = watch(clock, lines, expired)
    w.answered()
    timeout = NoAnswer("timed out", "timeout", URL)
    assert w.failed(timeout, "a", 0) is None and not w.in_outage  # retried as an ordinary failure
    assert w.failed(timeout, "b", 0) is not None and w.in_outage
    assert "stopped answering" in lines[-1] and "waiting for it until" in lines[-1]
    w.answered()
    assert "answers again" in lines[-1] and not w.in_outage and expired == []


def test_an_outage_past_its_window_stops_the_run_once():
    clock, lines, expired = Clock(), [], []
    w = watch(clock, lines, expired, outage_seconds=60)
    w.answered()
    assert w.failed(refused(), "a", 0) is not None  # refused: nothing listens there, an outage at once
    clock.now += 61
    assert w.failed(refused(), "a", 1) == 0.0 and w.failed(refused(), "b", 0) == 0.0
    assert len(expired) == 1 and "limits.outage_seconds = 60s" in expired[0]


def test_an_answer_that_is_not_a_gateways_ends_nothing_it_is_an_ordinary_failure():
    clock, lines, expired = Clock(), [], []
    w = watch(clock, lines, expired)
    w.answered()
    assert w.failed(TransientAPIError("HTTP 500", 500), "a", 0) is None
    assert w.failed(TransientAPIError("HTTP 503", 503), "a", 0) is None  # one gateway answer alone
    assert w.failed(TransientAPIError("HTTP 503", 503), "b", 0) is not None  # two requests: an outage


def test_during_an_outage_a_server_that_says_when_to_come_back_is_asked_no_sooner():
    clock, lines, expired = Clock(), [], []
    w = watch(clock, lines, expired)
    w.answered()
    busy = TransientAPIError("HTTP 503", 503, retry_after=40.0)
    w.failed(busy, "a", 0)
    assert w.failed(busy, "b", 0) == 40.0 and w.in_outage
