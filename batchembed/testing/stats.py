"""Counters of a fake provider's traffic for benchmarks: requests, accepted/throttled, tokens, bytes,
and per-second buckets -- enough to plot a run without keeping any request."""

from __future__ import annotations


class Stats:
    """What the fake answered, counted (not kept): ``GET /stats`` on a loopback server shows it."""

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.throttled = 0
        self.over_limit = 0
        self.throttled_by: dict[str, int] = {"requests": 0, "tokens": 0}
        self.bad = 0
        self.inputs = 0
        self.tokens_accepted = 0
        self.bytes_out = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.timeline: dict[int, list[int]] = {}

    def bucket(self, now: float) -> list[int]:
        """The per-second ``[ok, throttled, tokens, adaptive limit]`` counters of ``now`` (epoch seconds)."""
        if self.first_ts is None:
            self.first_ts = now
        self.last_ts = now
        sec = int(now - self.first_ts)
        b = self.timeline.get(sec)
        if b is None:
            b = self.timeline[sec] = [0, 0, 0, 0]
        return b

    def as_dict(self, timeline: bool) -> dict:
        """The counters as ``GET /stats`` shows them (``timeline``: with the per-second buckets)."""
        doc = {
            "requests": self.requests,
            "ok": self.ok,
            "throttled": self.throttled,
            "over_limit": self.over_limit,
            "throttled_by": self.throttled_by,
            "bad": self.bad,
            "inputs": self.inputs,
            "tokens_accepted": self.tokens_accepted,
            "bytes_out": self.bytes_out,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }
        if timeline:
            doc["timeline"] = [[s, *v] for s, v in sorted(self.timeline.items())]
        return doc
