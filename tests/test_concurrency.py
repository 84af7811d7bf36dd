"""The requests in flight, learned while sending (``limits.concurrency = "auto"``) or fixed: against a model
server in virtual time (pure), and a whole run against the in-process fake whose latency is virtual."""

from __future__ import annotations

import asyncio
import heapq
import json

import pytest

from batchembed.job.config import load_job
from batchembed.run.assemble import build_runner
from batchembed.run.pipeline import PieceWindow
from batchembed.sending.concurrency import ConcurrencyLearner
from batchembed.testing.virtual_time import VirtualLatency
from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here, write_parquet


def simulate(learner: ConcurrencyLearner, latency, answers: int, now: float = 0.0) -> float:
    """A closed loop in virtual time: ``learner.limit`` requests in flight, each answered ``latency(n, now)``
    seconds after it was sent (``n``: in flight then), the learner told of every answer. Returns the time."""
    due: list[tuple[float, int, float]] = []
    order = 0

    def fill() -> None:
        nonlocal order
        while len(due) < learner.limit:
            heapq.heappush(due, (now + latency(len(due) + 1, now), order, now))
            order += 1

    fill()
    for _ in range(answers):
        now, _, sent = heapq.heappop(due)
        learner.completed(now - sent, now)
        fill()
    return now


def fast(n: int, now: float) -> float:
    """A server far from saturated: the same latency however many requests it holds."""
    return 0.1


def saturating_at(k: int):
    """A server answering ``k`` requests at a time: more only wait (latency grows, throughput does not)."""
    return lambda n, now: 0.1 * max(1.0, n / k)


def test_it_doubles_to_the_ceiling_while_throughput_rises():
    learner = ConcurrencyLearner(start=8, ceiling=64)
    simulate(learner, fast, 600)
    assert learner.limit == 64 and learner.highest == 64
    assert [limit for limit, _ in learner.changes] == [16, 32, 64]
    assert "max_concurrency = 64" in learner.reason


def test_it_stops_where_more_in_flight_only_waits():
    learner = ConcurrencyLearner(start=8, ceiling=64)
    simulate(learner, saturating_at(16), 1500)
    assert 12 <= learner.limit <= 24, learner.changes  # 32 answered no faster than 16: back to about 16
    assert learner.highest == 32
    assert any("did not pay" in why for _, why in learner.changes)


def test_it_steps_down_when_latency_climbs_with_nothing_gained():
    learner = ConcurrencyLearner(start=8, ceiling=64)
    now = simulate(learner, fast, 600)  # a fast server: 64 in flight
    assert learner.limit == 64
    simulate(learner, saturating_at(8), 3000, now)  # then it slows down: 8 at a time
    assert learner.limit <= 16, learner.changes
    assert any("latency climbed" in why for _, why in learner.changes)


def test_the_first_epoch_warms_up_and_is_not_taken_for_the_starts_throughput():
    # a server answering 8 at a time, slow for its first 0.5 s (the run starting on the same cores): the
    # slow first epoch against a normal second made 16 look like it paid
    def warming(n: int, now: float) -> float:
        return saturating_at(8)(n, now) * (2.5 if now < 0.5 else 1.0)

    learner = ConcurrencyLearner(start=8, ceiling=64)
    simulate(learner, warming, 120)

    first, second = learner.changes[:2]
    assert first[0] == 16 and second[0] == 8, learner.changes  # without the warm-up: 16, then 32
    assert "more in flight did not pay" in second[1]


def test_latency_never_takes_the_window_below_its_floor_but_a_throttle_does():
    learner = ConcurrencyLearner(start=8, ceiling=64, floor=8)
    now = simulate(learner, fast, 600)
    simulate(learner, saturating_at(2), 3000, now)  # a server two at a time: more in flight only waits
    assert any("latency climbed" in why for _, why in learner.changes)
    assert min(limit for limit, _ in learner.changes) == 8 and learner.limit >= 8, learner.changes
    learner.throttled(4)  # the server refuses: that takes it below the floor
    assert learner.limit == 4 and "429/503" in learner.reason


def test_a_throttle_holds_the_halved_window():
    learner = ConcurrencyLearner(start=32, ceiling=64)
    learner.throttled(16)
    assert learner.limit == 16 and learner.state == "hold" and "429/503" in learner.reason


def test_the_reader_reads_ahead_for_the_requests_in_flight_now_not_for_the_ceiling():
    in_flight = {"rows": 8 * 256}  # auto at its start: 8 requests of 256 texts, whatever its ceiling

    async def scenario() -> list[bool]:
        window = PieceWindow(lambda: in_flight["rows"])
        for _ in range(4):  # twice the rows in flight and two more pieces of 4,096 rows: 4 at least
            await window.acquire()
        fifth = asyncio.create_task(window.acquire())
        await asyncio.sleep(0)
        waited = not fifth.done()
        window.release()  # a piece written: room for the fifth
        await fifth
        in_flight["rows"] = 64 * 256  # the window grew to 64: 10 pieces; the reader goes on at the next release
        window.release()
        more = [asyncio.create_task(window.acquire()) for _ in range(6)]
        await asyncio.sleep(0)
        return [
            waited,
            fifth.done(),
            sum(task.done() for task in more) == 6,
            (window.held, window.allowed()) == (9, 10),
        ]

    assert asyncio.run(scenario()) == [True, True, True, True]


#: Paces so high they never hold a request back: the answers' virtual time is all that limits the run.
UNPACED = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}


@pytest.fixture
def virtual(fake):
    """The fake's answers in virtual time: 0.05 s each while it is fast, one answer per 0.05/4 s (four at a
    time, the rest waiting) once ``slow`` is set."""
    state = {"slow_after": None}

    def latency(n: int) -> float:
        slow = state["slow_after"] is not None and model.clock.now >= state["slow_after"]
        return 0.05 * max(1.0, n / 4) if slow else 0.05

    model = VirtualLatency(latency)
    fake.virtual = model
    return model, state


def _run(tmp_path, fake, model, rows: int, **limits):
    texts = make_texts(rows, seed=7)
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=1000)
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 4, **UNPACED, **limits}, output={"shard_rows": rows})
    runner = build_runner(load_job(job), quiet=True, transport=fake.transport())
    window = runner.limits.window
    window.clock = model.clock  # the window measures latency and throughput in virtual time
    model.full = lambda held: held >= window.current  # the client sent all it may: time moves on
    assert runner.run() == 0
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    return json.loads((tmp_path / "out" / "_report.json").read_text())["limits"]["concurrency"], window


def test_auto_grows_against_a_fast_server_then_backs_off_when_its_latency_climbs(tmp_path, fake, virtual):
    model, state = virtual
    state["slow_after"] = 1.0  # virtual seconds: ~600 answers after it reached 32 in flight
    used, window = _run(tmp_path, fake, model, 6000, concurrency="auto", max_concurrency=32)

    assert used["mode"] == "auto" and used["start"] == 8 and used["max_concurrency"] == 32
    assert used["highest"] == 32 and fake.max_in_flight == 32  # grew to the ceiling against the fast server
    # the server now answers four at a time: more only waited; the window backs off to its floor (the start,
    # 8: latency never takes it lower) or a step above it, and stays near it (probes above it come back)
    limits = [limit for limit, _ in window.learner.changes]
    assert 8 <= min(limits) <= 9 and used["final"] <= 12, str(limits)
    steps = [why for _, why in window.learner.changes]
    assert any("latency climbed" in why for why in steps) and any("less waiting" in why for why in steps), steps
    assert used["why"] and used["changes"][-1]["to"] == used["final"]


def test_an_explicit_concurrency_is_fixed(tmp_path, fake, virtual):
    model, _ = virtual
    used, _ = _run(tmp_path, fake, model, 2000, concurrency=6)
    assert used == {"mode": "fixed", "configured": 6, "final": 6, "why": "limits.concurrency = 6"}
    assert fake.max_in_flight == 6


def test_the_summary_says_how_many_were_in_flight(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(300))
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 16, "concurrency": "auto"})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if "done:" in line)
    assert " in flight (auto)); " in summary, summary
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["limits"]["concurrency"]["mode"] == "auto"
