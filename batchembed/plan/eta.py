"""How long a run will take, as ``batchembed plan`` says it, and on what the figure rests.

* The local model is bound by this machine's CPU, not by rate limits: the estimate comes from
  timing the model itself on the job's first texts (as prepared: prefixed, cut), here and now,
  with the threads the run will use. It is an estimate ("about"), as good as the sample is typical.
* A remote provider is bound by the limits the run paces to (``limits``: min of configured and what
  the server announces): the token and request budgets give a lower bound ("at least"; latency and
  concurrency can only make it longer). Which limits: the ones the server announced to the last run
  of the same output (its ``_report.json`` records them), else the configured ones — the server's
  are learned from its first answer, so a run may go slower than the configured figure.

Nothing here sends a request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from batchembed.human import per_minute, per_second
from batchembed.job.config import JobConfig
from batchembed.job.resolved import ResolvedModel
from batchembed.output.layout import REPORT
from batchembed.output.store import open_store

#: Texts the plan keeps from the start of the input to time the local model on.
SAMPLE_TEXTS = 4096
#: Tokens of the warm-up call (untimed for the estimate: a first run at new shapes is slow), whose
#: rough speed sizes the timed sample.
WARM_UP_TOKENS = 256
#: Seconds the timed sample should take, and its bounds in tokens.
MEASURE_SECONDS = 2.0
MEASURE_TOKENS = (4096, 32_768)


@dataclass(frozen=True)
class Estimate:
    """An ETA and what it rests on."""

    seconds: float
    basis: str  # "measured" (local model) | "server" (limits a previous run learned) | "configured"
    bound: str  # "cpu" | "tokens" | "requests": what sets the pace
    detail: str  # one human line: how the figure was obtained
    requests_per_minute: float | None = None  # the paces used (remote)
    tokens_per_minute: float | None = None


def _take(texts: list[str], counts: list[int], start: int, tokens: float) -> int:
    """The end index of texts from ``start`` adding up to ``tokens`` (at least one text)."""
    end, total = start, 0
    while end < len(texts) and (end == start or total < tokens):
        total += counts[end]
        end += 1
    return end


def measure_local(model: Any, texts: list[str], tokens_to_send: int, rows: int, clock=time.perf_counter) -> Estimate:
    """Time ``model`` (a ``LocalEmbedder``) on ``texts`` and scale its token rate to ``tokens_to_send``;
    ``rows``: the rows those tokens embed (for the rows/s figure).

    A short warm-up call gives a rough speed that sizes the timed sample to about ``MEASURE_SECONDS``;
    the sample is then embedded in one call, sorted by length inside the model as a run's requests are.
    """
    threads = getattr(model, "threads", None)
    on = f" on {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    if not texts or not tokens_to_send:
        return Estimate(0.0, "measured", "cpu", f"nothing to embed{on}")
    counts = [int(c) for c in model.count_tokens(texts)]
    warm = _take(texts, counts, 0, WARM_UP_TOKENS)
    started = clock()
    _, done = model.encode(texts[:warm])
    rough = int(done.sum()) / max(clock() - started, 1e-6)
    low, high = MEASURE_TOKENS
    end = _take(texts, counts, warm, min(max(rough * MEASURE_SECONDS, low), high))
    sample = texts[warm:end] or texts[:warm]  # a tiny job: its whole input was the warm-up
    started = clock()
    _, done = model.encode(sample)
    rate = int(done.sum()) / max(clock() - started, 1e-6)  # tokens per second
    seconds = tokens_to_send / rate
    detail = (
        f"measured just now on this machine: {model.model}{on} embedded {len(sample):,} of this job's texts "
        f"at {per_second(rate, 'tokens')}, about {per_second(rows / seconds, 'rows')}"
    )
    return Estimate(seconds, "measured", "cpu", detail)


def learned_limits(previous_report: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(requests/min, tokens/min) the server announced to a previous run, from its ``_report.json``
    (``limits``: each pace with its source); None for a pace that was not the server's."""
    limits = (previous_report or {}).get("limits") or {}

    def server(kind: str) -> float | None:
        value, source = limits.get(f"{kind}_per_minute"), limits.get(f"{kind}_per_minute_source")
        return float(value) if source in ("server", "adaptive") and value else None

    return server("requests"), server("tokens")


def read_previous_report(job: JobConfig) -> dict[str, Any] | None:
    """The ``_report.json`` a previous run left in the job's output, if any (unreadable: None)."""
    try:
        data = open_store(job).read_bytes(REPORT)
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None


def paced(model: ResolvedModel, requests: int, tokens: int, previous_report: dict[str, Any] | None) -> Estimate:
    """The lower bound for ``requests`` requests of ``tokens`` tokens at the limits a run will pace to."""
    rpm, tpm = float(model.requests_per_minute), float(model.tokens_per_minute)
    learned_rpm, learned_tpm = learned_limits(previous_report)
    learned = learned_rpm is not None or learned_tpm is not None
    if learned_rpm is not None:
        rpm = min(rpm, learned_rpm)
    if learned_tpm is not None:
        tpm = min(tpm, learned_tpm)
    by_requests, by_tokens = requests / rpm, tokens / tpm
    bound = "tokens" if by_tokens > by_requests else "requests"
    rates = f"{per_minute(rpm, 'requests')} and {per_minute(tpm, 'tokens')}"
    if learned:
        why = "the server's limits, as the last run of this output learned them (its _report.json)"
    else:
        why = "the configured limits; the server's own are learned from its first answer, and may be lower"
    detail = f"paced to {rates}: {why}; {bound} bound"
    return Estimate(max(by_requests, by_tokens) * 60.0, "server" if learned else "configured", bound, detail, rpm, tpm)
