"""How many requests to keep in flight, learned while sending (``limits.concurrency = "auto"``).

A server that is not rate-limited answers more per second with more requests in flight, until
something saturates: the server's GPU, the network, or this process's own CPU (decoding and writing
answers). Past that point more in flight only adds waiting: latency climbs, throughput does not. So
the window is hill-climbed on what the answers show, epoch by epoch (an epoch: one window's worth of
answers, counted once the answers to the requests sent before the last change are in):

* warm-up: the run's first epoch is not measured. The first answers come while the reader prepares
  its first pieces and the writer opens its shard, on the same cores: measured, that epoch ran at about
  half the pace of the next ones, so the first doubling always seemed to pay;
* start: from ``start``, double while an epoch's throughput rises by ``RISE`` over the one before;
  the first doubling that does not pay goes back to the window before it, which is then held;
* hold: every ``PROBE_EVERY`` epochs try a step up (a quarter more), kept, and tried again, while it
  raises throughput by half the step's share at least; when latency climbs to ``CLIMB`` times what it
  was when the window was chosen (the server or this process got slower) try a step down instead, kept,
  and tried again, while throughput falls by less than ``KEEP_DOWN``: as many answers per second with
  less waiting. Latency never takes the window below ``floor`` (the start): an offline job wants
  answers per second, not short waits, and on a client short of CPU its own contention looks like a
  server's latency climbing (on 2 shared cores the window used to ratchet down to 1-3, 25% slower);
* a change that does not pay goes back to the window before it.

Rate limits are not its business: a paced run (tokens/min, requests/min) does not answer faster with
more in flight, so the window holds; a 429 or 503 halves it (``AdaptiveWindow.on_throttled``) and the
climb resumes from there. Every decision is kept with its reason, for ``_report.json`` and the summary.

Pure and clock-free: ``completed(latency, now)`` is fed each answer's latency and the time it came;
the tests drive it with their own clock.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

#: An epoch's throughput must beat the one before by this share for a larger window to count.
RISE = 0.08
#: Latency at this multiple of what it was when the window was chosen: a step down is tried.
CLIMB = 1.3
#: A step down is kept while throughput falls by less than this share (noise, not a loss).
KEEP_DOWN = 0.03
#: Epochs the window holds before it tries a step up again.
PROBE_EVERY = 4
#: Answers an epoch measures at least (small windows are noisy).
MIN_ANSWERS = 12


@dataclass(frozen=True)
class Epoch:
    """What one epoch measured at one window."""

    limit: int
    throughput: float  # answers per second
    latency: float  # median seconds per answer


class ConcurrencyLearner:
    """The in-flight window, learned from answers (see the module): ``limit`` is the window now."""

    def __init__(self, start: int, ceiling: int, floor: int = 1) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.limit = max(self.floor, min(start, self.ceiling))
        self.start = self.limit
        self.state = "start"
        self.reason = f"started at {self.limit}"
        self.changes: list[tuple[int, str]] = []  # (window, why), each change in order
        self.highest = self.limit
        self._previous: Epoch | None = None  # the last epoch, at the window before this one
        self._chosen: float | None = None  # the latency when the window held now was chosen
        self._held = 0
        self._warming = True  # the first epoch (see the module) is not measured
        self._begin_epoch(None)

    # ------------------------------------------------------------------------------------ input

    def completed(self, latency: float, now: float) -> bool:
        """One answer, ``latency`` seconds after it was sent, arrived at ``now``; True if the window changed."""
        if self._skip > 0:  # answers to requests sent under the window before: not this epoch's
            self._skip -= 1
            if self._skip == 0:
                self._since = now
            return False
        if self._since is None:
            self._since = now
        self._latencies.append(latency)
        if len(self._latencies) < self._needed:
            return False
        elapsed = now - self._since
        if elapsed <= 0:
            return False
        if self._warming:
            self._warming = False
            self._begin_epoch(None)
            return False
        epoch = Epoch(self.limit, len(self._latencies) / elapsed, statistics.median(self._latencies))
        return self._decide(epoch, now)

    def throttled(self, limit: int) -> None:
        """A 429/503 cut the window to ``limit`` (below ``floor`` too: the server said so): hold there,
        measure afresh."""
        limit = max(1, min(limit, self.ceiling))
        if limit != self.limit:
            self._set(limit, "hold", f"halved to {limit} after the server refused requests (429/503)")
        self._previous = self._chosen = None

    # --------------------------------------------------------------------------------- deciding

    def _decide(self, epoch: Epoch, now: float) -> bool:
        before, state, limit = self._previous, self.state, self.limit
        self._previous = epoch
        if state == "start":
            if before is None or epoch.throughput >= before.throughput * (1 + RISE):
                if limit >= self.ceiling:
                    return self._hold(epoch, f"reached max_concurrency = {self.ceiling} with throughput still rising")
                return self._set(min(self.ceiling, limit * 2), "start", self._why_up(before, epoch))
            return self._back(before, epoch)
        if state in ("up", "down"):
            share = abs(limit - before.limit) / before.limit / 2  # what half the step should change
            if state == "up" and epoch.throughput >= before.throughput * (1 + max(RISE, share)):
                if limit >= self.ceiling:
                    return self._hold(epoch, f"reached max_concurrency = {self.ceiling}: {self._why_up(before, epoch)}")
                return self._step(+1, self._why_up(before, epoch))
            if state == "down" and epoch.throughput >= before.throughput * (1 - KEEP_DOWN):
                why = (
                    f"{limit} in flight answer about as fast as {before.limit} ({epoch.throughput:.1f} vs "
                    f"{before.throughput:.1f} answers/s) with less waiting ({epoch.latency * 1000:.0f} vs "
                    f"{before.latency * 1000:.0f} ms)"
                )
                return self._hold(epoch, why) if limit <= self.floor else self._step(-1, why)
            return self._back(before, epoch)
        self._held += 1  # hold
        if self._chosen is not None and epoch.latency >= self._chosen * CLIMB and limit > self.floor:
            return self._step(
                -1,
                f"latency climbed to {epoch.latency / self._chosen:.1f}x what it was when {limit} was chosen "
                f"({self._chosen * 1000:.0f} -> {epoch.latency * 1000:.0f} ms): trying fewer",
            )
        if self._chosen is None:
            self._chosen = epoch.latency
        if self._held >= PROBE_EVERY and limit < self.ceiling:
            return self._step(+1, f"held {limit} for {self._held} epochs: trying more")
        self._begin_epoch(None)
        return False

    def _step(self, direction: int, reason: str) -> bool:
        """Try a quarter more (``direction`` +1) or fewer (-1) in flight."""
        step = max(1, self.limit // 4)
        limit = max(self.floor, min(self.ceiling, self.limit + direction * step))
        return self._set(limit, "up" if direction > 0 else "down", reason)

    def _why_up(self, before: Epoch | None, epoch: Epoch) -> str:
        if before is None:
            return f"{epoch.limit} in flight: {epoch.throughput:.1f} answers/s, latency {epoch.latency * 1000:.0f} ms"
        return (
            f"throughput rose {epoch.throughput / before.throughput:.2f}x from {before.limit} to {epoch.limit} "
            f"in flight (latency {before.latency * 1000:.0f} -> {epoch.latency * 1000:.0f} ms)"
        )

    def _back(self, before: Epoch, epoch: Epoch) -> bool:
        """The change to ``epoch.limit`` did not pay: back to ``before.limit`` and hold."""
        self._previous = before
        verb = "more" if epoch.limit > before.limit else "fewer"
        changed = self._set(
            before.limit,
            "hold",
            f"{verb} in flight did not pay ({epoch.limit}: {epoch.throughput:.1f} answers/s, latency "
            f"{epoch.latency * 1000:.0f} ms; {before.limit}: {before.throughput:.1f} answers/s, "
            f"{before.latency * 1000:.0f} ms): kept {before.limit}",
        )
        self._chosen = before.latency
        return changed

    def _hold(self, epoch: Epoch, reason: str) -> bool:
        """Keep the window ``epoch`` measured; its latency is what a climb is measured against."""
        self.state, self.reason, self._held, self._chosen = "hold", reason, 0, epoch.latency
        self._begin_epoch(None)
        return False

    def _set(self, limit: int, state: str, reason: str) -> bool:
        changed, before = limit != self.limit, self.limit
        self.limit, self.state, self.reason, self._held = limit, state, reason, 0
        self.highest = max(self.highest, limit)
        if changed:
            self.changes.append((limit, reason))
        self._begin_epoch(before if changed else None)
        return changed

    def _begin_epoch(self, in_flight: int | None) -> None:
        """A new epoch; after a change, the answers to the ``in_flight`` requests sent before it are skipped
        (their latencies and pace belong to the window before)."""
        self._skip = in_flight or 0
        self._since: float | None = None
        self._latencies: list[float] = []
        self._needed = max(MIN_ANSWERS, self.limit)
