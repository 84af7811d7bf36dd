"""``batchembed run JOB --shard I/N``: this process runs part I of N of one job (a static split).

Part I takes the units whose ordinal is I modulo N (the same split on every run), records them in
its own manifest under its own lock/lease (``output.split_part.SplitPart``), and paces itself to 1/N of the
configured rates (unless ``engine.shard_pacing = "full"``), so N parts together stay inside one
account's limits. The part that finishes last and finds every part complete publishes the table and
writes ``_SUCCESS``.
"""

from __future__ import annotations

import functools

from batchembed.job.config import JobConfig
from batchembed.job.resolved import ResolvedJob
from batchembed.output.parts import owned_by
from batchembed.output.split_part import SplitPart
from batchembed.run.placement import Placement, job_limits
from batchembed.sending.limits import RateLimits


def _share(count: int, resolved: ResolvedJob) -> RateLimits:
    """1/``count`` of the job's rates: ``count`` parts together pace like one run."""
    model = resolved.model
    return RateLimits(
        max(1, model.requests_per_minute // count),
        max(1, model.tokens_per_minute // count),
        resolved.config.limits.concurrency,
    )


def part_placement(job: JobConfig, part: tuple[int, int]) -> Placement:
    """How part ``(I, N)`` runs: its own units, manifest and lease; other parts' journals kept; the part
    that completes the split publishes."""
    owns = owned_by(part)
    return Placement(
        role=functools.partial(SplitPart, part),
        units=lambda unit: owns(unit.name),
        limits=functools.partial(_share, part[1]) if job.engine.shard_pacing == "share" else job_limits,
        keeps_journals=True,  # other parts of the job may have units in flight
        publishes=False,  # the part that finds every part complete publishes the whole table
    )
