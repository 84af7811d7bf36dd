"""Engines: where a job's units run. ``local`` is this process (optionally one ``--shard I/N`` part of
the job); ``ray`` spreads the units over Ray workers (:mod:`.ray_engine`); a ``tier = "batch"`` job hands
its texts to the provider's batches first (:mod:`batchembed.run.batch`). Each is a ``Placement`` for the
one ``JobRunner``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from batchembed.errors import UsageError
from batchembed.job.config import JobConfig
from batchembed.job.resolved import resolve
from batchembed.output.parts import parse_shard
from batchembed.run.assemble import build_runner
from batchembed.run.batch.stages import batch_placement, refuse_engines
from batchembed.run.engines.ray_engine import driver_placement, import_ray
from batchembed.run.engines.shard import part_placement

if TYPE_CHECKING:  # aiohttp is imported only by commands that send requests
    from batchembed.providers.transport import Transport


def run_job(
    job: JobConfig,
    *,
    quiet: bool = False,
    restart: bool = False,
    retry_failed: bool = True,
    accept_model_change: bool = False,
    engine: str | None = None,
    workers: int | None = None,
    shard: str | None = None,
    transport: Transport | None = None,
    wait: bool = True,
) -> int:
    """Run ``job`` on the chosen engine (CLI flags override ``[engine]``); return the exit code.

    ``transport`` carries this process's HTTP requests (tests: the fake provider in-process); Ray
    workers, being other processes, always use the network."""
    kind = engine or job.engine.kind
    if workers is not None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        job = dataclasses.replace(job, engine=dataclasses.replace(job.engine, workers=workers))
    options = {
        "quiet": quiet,
        "restart": restart,
        "retry_failed": retry_failed,
        "accept_model_change": accept_model_change,
        "transport": transport,
    }
    if job.model.tier == "batch":
        refuse_engines(shard, kind)
        return build_runner(job, placement=batch_placement(job, wait, transport), **options).run()
    if not wait:
        raise UsageError('--no-wait is for model.tier = "batch" jobs (an online run has nothing to wait for)')
    if shard is not None:
        if kind == "ray":
            raise UsageError("--shard and --engine ray do not go together: Ray already splits the job over workers")
        return build_runner(job, placement=part_placement(job, parse_shard(shard)), **options).run()
    if kind == "ray":
        import_ray()  # a clear error naming the extra to install, before anything else
        # the driver embeds nothing: a local model is loaded only on the workers
        return build_runner(resolve(job, embeds=False), placement=driver_placement(job), **options).run()
    return build_runner(job, **options).run()
