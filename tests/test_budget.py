"""The job-wide budget the Ray workers share: no 60-second window over the limit, pauses and learned limits."""

from __future__ import annotations

import asyncio

from batchembed.run.engines.budget import JobBudget, SharedLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _send_times(budget: JobBudget, clock: Clock, n: int, tokens: int = 1, callers: int = 3) -> list[float]:
    """When ``n`` requests, asked for round-robin by ``callers`` workers as fast as allowed, may go out."""
    times = []
    for i in range(n):
        wait = budget.reserve(1, tokens)
        times.append(clock.now + wait)
        if i % callers == callers - 1:
            clock.now = max(clock.now, times[-1])  # the workers wait for their grants
    return times


def _most_in(times: list[float], seconds: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_no_minute_sees_more_than_the_requests_limit_and_the_rate_stays_close_to_it():
    clock = Clock()
    budget = JobBudget(600, 10**9, clock=clock)
    times = _send_times(budget, clock, 3000)
    assert _most_in(times, 60.0) <= 600
    span = max(times) - min(times)
    assert 3000 / span * 60 > 0.97 * 600  # and it does not leave much of the budget unused


def test_tokens_limit_paces_big_requests():
    clock = Clock()
    budget = JobBudget(10**6, 60_000, clock=clock)
    times = _send_times(budget, clock, 300, tokens=1000)
    # 1000 tokens each: at most 60 requests in any minute
    assert _most_in(times, 60.0) <= 60


def test_a_pause_holds_every_worker_and_learned_limits_lower_the_rate():
    clock = Clock()
    budget = JobBudget(600, 10**9, clock=clock)
    budget.pause(5.0)
    assert budget.reserve(1, 1) >= 5.0
    budget.learn(120, None)
    assert budget.limits()["requests_per_minute"] == 120
    budget.learn(6000, None)  # a server raising its limit is followed, never above the configured one
    assert budget.limits()["requests_per_minute"] == 600


def test_header_less_429s_from_any_worker_lower_the_job_rate_and_hold_every_worker():
    clock = Clock()
    budget = JobBudget(2400, 10**9, clock=clock)
    # three workers at 10 requests/s for a minute: the server accepted 600 (it allows no more)
    for _ in range(600):
        budget.reserve(1, 10, accepted=(1, 10))
        clock.now += 0.1
    budget.throttled(429)  # one worker's 429, announcing nothing

    limits = budget.limits()
    assert limits["source"] == "adaptive" and limits["throttled"] == 1
    assert 0.9 * 600 <= limits["requests_per_minute"] <= 600  # a little under what the server accepted
    assert budget.reserve(1, 10) > 0  # every worker is held a moment
    clock.now += 10
    times = _send_times(budget, clock, 1200)
    assert _most_in(times, 60.0) <= 600
    # accepted requests win the rate back, a little at a time
    for _ in range(300):
        budget.reserve(1, 10, accepted=(1, 10))
    assert budget.limits()["requests_per_minute"] > limits["requests_per_minute"]


def test_announced_limits_stop_the_probing():
    clock = Clock()
    budget = JobBudget(2400, 10**9, clock=clock)
    budget.learn(1200, None)
    for _ in range(100):
        budget.reserve(1, 10, accepted=(1, 10))
    budget.throttled(429)
    assert budget.limits()["requests_per_minute"] == 1200


def test_a_header_less_429_seen_by_many_workers_at_once_is_one_event_one_decrease():
    clock = Clock()
    budget = JobBudget(2400, 10**9, clock=clock)
    for _ in range(600):  # the server accepted 600 requests over the last minute
        budget.reserve(1, 10, accepted=(1, 10))
        clock.now += 0.1
    # four workers' requests granted at the same moment, all answered 429 (the server's window is full)
    granted = [budget.grant(1, 10)[1] for _ in range(4)]
    budget.throttled(429, granted[0])
    once = budget.limits()
    hold = budget.reserve(1, 10)
    for epoch in granted[1:]:
        budget.throttled(429, epoch)

    assert budget.limits()["requests_per_minute"] == once["requests_per_minute"]  # one decrease
    assert budget.reserve(1, 10) <= hold  # and the hold did not grow with each report
    assert budget.limits()["throttle_events"] == 1 and budget.limits()["throttled"] == 4
    clock.now += 30  # a report of the same burst arriving late is still that event
    budget.throttled(429, granted[-1])
    assert budget.limits()["requests_per_minute"] == once["requests_per_minute"]
    # a request granted after the decrease and answered 429 is news: the rate goes down again
    _, after = budget.grant(1, 10)
    budget.throttled(429, after)
    assert budget.limits()["requests_per_minute"] < once["requests_per_minute"]
    assert budget.limits()["throttle_events"] == 2


class _Actor:
    """A ``JobBudget`` called as a worker calls its actor (``await budget.method.remote(...)``)."""

    def __init__(self, budget: JobBudget) -> None:
        self.budget = budget

    def __getattr__(self, name):
        method = getattr(self.budget, name)

        class _Remote:
            @staticmethod
            def remote(*args):  # runs at once (a fire-and-forget call is never awaited), awaitable like a ref
                value = method(*args)
                done = asyncio.get_running_loop().create_future()
                done.set_result(value)
                return done

        return _Remote


def test_workers_429d_together_report_one_event_through_their_shared_limits():
    budget = JobBudget(6000, 10**9)
    actor = _Actor(budget)
    workers = [SharedLimits(actor, 4, 6000, 10**9) for _ in range(3)]
    calls = []
    real = budget.throttled
    budget.throttled = lambda status, granted_in=None: (calls.append(granted_in), real(status, granted_in))

    async def request(limits: SharedLimits) -> None:  # one request: admitted, then answered 429 with no headers
        await limits.admit(10)
        await asyncio.sleep(0)  # every request is in flight before any answer comes back
        limits.observe({}, 429, 10)

    async def main() -> None:
        await asyncio.gather(*(request(w) for w in workers for _ in range(2)))

    asyncio.run(main())
    assert calls == [0] * 6  # each report says which epoch its request was granted in
    assert budget.limits()["throttle_events"] == 1
