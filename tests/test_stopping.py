"""The stop's rules in one event loop (no process, no clock): what a stop interrupts at once, what it gives
the grace, and what it cancels when the grace is over. The real process is tests/test_outages.py's."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import pytest

from batchembed.exitcodes import ExitCode
from batchembed.run.stopping import OUTAGE, StopControl, Stopped, exit_code


class Stages:
    def __init__(self) -> None:
        self.stopped = self.abandoned = False

    def stop(self) -> None:
        self.stopped = True

    def abandon(self) -> None:
        self.abandoned = True

    def on_signal(self, sig: int) -> bool:
        return False


def a_run(in_flight: int = 0) -> SimpleNamespace:
    lines: list[str] = []
    return SimpleNamespace(
        stopping=None,
        sender=SimpleNamespace(stopping=False),
        stages=Stages(),
        progress=SimpleNamespace(line=lines.append, lines=lines),
        stats=SimpleNamespace(in_flight=in_flight),
    )


async def forever() -> None:
    await asyncio.Event().wait()


def test_a_wait_that_buys_nothing_ends_at_once_whatever_the_grace():
    async def scenario() -> None:
        run = a_run(in_flight=1)
        stops = StopControl(run, grace=3600)  # a wait for the grace would hang the test
        canary = asyncio.ensure_future(stops.interruptible(forever()))
        back_off = asyncio.ensure_future(stops.pause(3600))
        await asyncio.sleep(0)  # both are waiting
        stops.stop(signal.SIGTERM, "SIGTERM: stopping")
        for wait in (canary, back_off):
            with pytest.raises(Stopped):
                await wait
        assert run.sender.stopping and run.stages.stopped and not run.stages.abandoned
        assert run.progress.lines == ["SIGTERM: stopping"]

    asyncio.run(scenario())


def test_a_graced_wait_and_the_requests_in_flight_are_cancelled_when_the_grace_is_over():
    async def scenario() -> None:
        run = a_run(in_flight=1)  # a request never answered
        stops = StopControl(run, grace=0.2)
        round_ = asyncio.ensure_future(stops.interruptible(forever(), graced=True))
        await asyncio.sleep(0)
        stops.stop(signal.SIGTERM, "stopping")
        assert not round_.done()  # on the wire: it has the grace
        with pytest.raises(Stopped):
            await round_
        assert run.stages.abandoned

    asyncio.run(scenario())


def test_after_a_stop_nothing_new_waits():
    async def scenario() -> None:
        run = a_run()
        stops = StopControl(run, grace=30)
        stops.stop(OUTAGE, "the server is away")
        with pytest.raises(Stopped):
            await stops.interruptible(forever())
        with pytest.raises(Stopped):
            await stops.pause(3600)

    asyncio.run(scenario())


def test_the_exit_codes_of_a_stop():
    assert exit_code(signal.SIGTERM) == ExitCode.SIGTERM == 143
    assert exit_code(signal.SIGINT) == ExitCode.SIGINT == 130
    assert exit_code(OUTAGE) == ExitCode.SERVER_UNREACHABLE == 68
