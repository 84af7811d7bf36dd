"""The sender in-process: a fake task stands in for the provider (no sockets, no files, no sleeps)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from batchembed.errors import (
    AuthError,
    InputTooLong,
    MalformedResponse,
    PayloadTooLarge,
    TerminalAPIError,
    TransientAPIError,
)
from batchembed.sending.limits import RateLimits
from batchembed.sending.sender import Sender, SendHooks, Stop
from batchembed.stats import Stats
from batchembed.tasks import Piece, Request


class FakeTask:
    """Answers each item with its index; ``fail`` maps a call number or an item to the error to raise."""

    def __init__(self, fail=None, reported=None) -> None:
        self.fail = fail or (lambda call, items: None)
        self.reported = reported
        self.calls: list[list[int]] = []
        self.answers: dict[int, int] = {}

    async def call(self, request, meter):
        items = [int(i) for i in request.items]
        async with meter(request.tokens):
            self.calls.append(items)
            error = self.fail(len(self.calls), items)
            if error is not None:
                raise error
            return SimpleNamespace(values=items, headers={}, model="m")

    def accept(self, request, answer):
        if len(answer.values) != len(request.items):
            raise MalformedResponse("count")
        for i in answer.values:
            self.answers[i] = i
        return self.reported


def _request(n: int = 8, tokens: int = 80) -> Request:
    chunk = SimpleNamespace(unit=SimpleNamespace(tokens=0))
    piece = Piece(chunk=chunk, rows=n, skipped=0, work=None)
    return Request(piece, np.arange(n), tokens)


def _sender(task, **kwargs) -> Sender:
    return Sender(task, RateLimits(10**6, 10**9, 4), Stats(), max_retries=kwargs.pop("max_retries", 2), **kwargs)


def _transient(status=503):
    return TransientAPIError("busy", status, retry_after=0)


def test_an_answer_is_accepted_charged_and_reported_to_the_hooks():
    seen = []
    task = FakeTask(reported=75)
    hooks = SendHooks(sent=lambda r: seen.append("sent"), answered=lambda r, a: seen.append("answered"),
                      usage=lambda ours, theirs: seen.append((ours, theirs)))  # fmt: skip
    sender = _sender(task, hooks=hooks)
    request = _request()
    asyncio.run(sender.send(request))
    assert task.answers == {i: i for i in range(8)}
    assert seen == ["sent", "answered", (80, 75)]
    assert sender.stats.requests == 1 and sender.stats.tokens == 75 and request.piece.chunk.unit.tokens == 75
    assert request.piece.errors == {}


def test_transient_errors_are_retried_and_the_journal_hears_sent_once():
    sent = []
    task = FakeTask(fail=lambda call, items: _transient() if call <= 2 else None)
    sender = _sender(task, hooks=SendHooks(sent=sent.append))
    request = _request()
    asyncio.run(sender.send(request))
    assert len(task.calls) == 3 and sender.stats.retries["503"] == 2
    assert sent == [request] and sender.stats.requests == 3
    assert sender.stats.tokens == 80  # no usage reported: our count of what was sent


def test_too_long_splits_down_to_the_row_and_dead_letters_it():
    task = FakeTask(fail=lambda call, items: InputTooLong("too long", 400) if 5 in items else None)
    sender = _sender(task)
    sender.succeeded_once = True
    request = _request()
    asyncio.run(sender.send(request))
    assert request.piece.errors == {5: "too long"}
    assert sorted(task.answers) == [0, 1, 2, 3, 4, 6, 7]
    assert [5] in task.calls and sender.stats.retries["split-400"] == 3


def test_a_413_halves_the_request_and_charges_each_half_its_share():
    task = FakeTask(fail=lambda call, items: PayloadTooLarge("big", 413) if len(items) > 4 else None)
    sender = _sender(task)
    asyncio.run(sender.send(_request(8, 80)))
    assert sorted(len(c) for c in task.calls) == [4, 4, 8]
    assert sender.stats.tokens == 80 and sender.stats.retries["split-413"] == 1


def test_a_row_the_server_finds_too_long_is_cut_before_it_is_dead_lettered():
    cuts = []

    def shorten(request):
        cuts.append(int(request.items[0]))
        return len(cuts) < 2

    task = FakeTask(fail=lambda call, items: InputTooLong("too long", 400) if 3 in items else None)
    sender = _sender(task, shorten=shorten)
    sender.succeeded_once = True
    request = _request(4, 40)
    asyncio.run(sender.send(request))
    assert cuts == [3, 3] and sender.stats.retries["cut-too-long"] == 1
    assert request.piece.errors == {3: "too long"}


def test_exhausted_retries_dead_letter_then_give_up_after_n_in_a_row():
    task = FakeTask(fail=lambda call, items: _transient(502))
    sender = _sender(task, max_retries=1, give_up_after=3)
    requests = [_request() for _ in range(3)]

    async def three() -> None:
        for request in requests:
            await sender.send(request)

    with pytest.raises(TransientAPIError, match="3 requests in a row failed after 1 retries"):
        asyncio.run(three())
    assert requests[0].piece.errors[0].startswith("gave up after 1 retries: busy")
    assert requests[1].piece.errors[0].startswith("gave up after 1 retries: busy")


def test_a_success_resets_the_give_up_count():
    task = FakeTask(fail=lambda call, items: _transient(502) if call <= 2 or call in (4, 5) else None)
    sender = _sender(task, max_retries=1, give_up_after=2)

    async def three() -> None:
        await sender.send(_request())  # calls 1, 2: dead-lettered (1 in a row)
        await sender.send(_request())  # call 3: answered, the count starts again
        await sender.send(_request())  # calls 4, 5: dead-lettered (1 in a row): no give-up

    asyncio.run(three())
    assert sender.exhausted_in_a_row == 1


def test_settings_errors_stop_the_job_at_once():
    bad_key = FakeTask(fail=lambda call, items: AuthError("bad key", 401))
    with pytest.raises(AuthError):
        asyncio.run(_sender(bad_key).send(_request()))
    assert len(bad_key.calls) == 1
    refused = FakeTask(fail=lambda call, items: TerminalAPIError("unknown field", 422))
    with pytest.raises(TerminalAPIError):  # nothing has worked yet: the job's settings, not one row
        asyncio.run(_sender(refused).send(_request()))


def test_a_terminal_error_after_a_success_dead_letters_only_its_row():
    task = FakeTask(fail=lambda call, items: TerminalAPIError("bad row", 422) if 2 in items else None)
    sender = _sender(task)
    sender.succeeded_once = True
    request = _request(4, 40)
    asyncio.run(sender.send(request))
    assert request.piece.errors == {2: "bad row"}


def test_a_malformed_answer_is_retried():
    task = FakeTask()
    answers = iter([[0], None])

    original = task.call

    async def call(request, meter):
        answer = await original(request, meter)
        short = next(answers)
        return SimpleNamespace(values=short, headers={}, model="m") if short is not None else answer

    task.call = call
    sender = _sender(task)
    asyncio.run(sender.send(_request(2, 20)))
    assert task.answers == {0: 0, 1: 1} and sender.stats.retries["MalformedResponse"] == 1


def test_a_stop_ends_a_request_between_attempts():
    def fail(call, items):
        sender.stopping = True  # asked to stop while this attempt was on the wire
        return _transient()

    task = FakeTask(fail=fail)
    sender = _sender(task, max_retries=5)
    with pytest.raises(Stop):
        asyncio.run(sender.send(_request()))
    assert len(task.calls) == 1  # the attempt under way finished; no new one started (no back-off slept)


def test_a_request_waiting_for_its_slot_when_the_run_stops_never_goes_out():
    task = FakeTask()
    sender = _sender(task, max_retries=5)
    sender.stopping = True
    with pytest.raises(Stop):
        asyncio.run(sender.send(_request()))
    assert task.calls == []


def test_a_task_that_sends_nothing_is_charged_nothing():
    class Shared(FakeTask):
        async def call(self, request, meter):
            return SimpleNamespace(values=[int(i) for i in request.items], headers={}, model=None)

    sender = _sender(Shared())
    request = _request()
    asyncio.run(sender.send(request))
    assert sender.stats.requests == 0 and sender.stats.tokens == 0 and request.piece.chunk.unit.tokens == 0
