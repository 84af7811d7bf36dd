"""``batchembed run JOB --engine ray``: one job's units spread over Ray workers, committed by the driver.

The driver (this process) does what a plain run does before and after the pipeline — discover the
inputs, take the output's lock/lease, load the manifest, and at the end write the report and
``_SUCCESS`` — but its stages (:class:`RayStages`) hand slices of the units to Ray tasks: slice ``i``
of ``W`` is the units whose ordinal is ``i`` modulo ``W`` (slice 0 also retries the failed rows of
earlier runs). Each task runs the same run on its units (:func:`worker_placement`: the output's
``DriverWorker`` role), writes their shards to the output and *streams back* each written shard's
record; the driver records it in the manifest (the commit point), so a unit is committed as soon as
its shard is written.

Ray schedules the tasks (``cpus_per_worker``, ``gpus_per_worker``) and detects a dead worker process
or node; the driver then re-submits that slice with the manifest as it stands, so a killed worker
costs only the unit it was writing (its partial or unrecorded shard is an orphan, deleted before
``_SUCCESS``). A killed driver takes its tasks with it (Ray ends a dead driver's tasks); rerunning the
same command resumes from the manifest like any run.

All workers share one rate limit: a :class:`~batchembed.run.engines.budget.JobBudget` actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from batchembed.errors import BatchEmbedError, ConfigError, ServerUnreachable
from batchembed.exitcodes import ExitCode
from batchembed.job.config import JobConfig
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.output.parts import owned_by
from batchembed.output.roles import DriverWorker
from batchembed.output.store.fencing import FenceToken
from batchembed.run.assemble import build_runner
from batchembed.run.engines.budget import JobBudget, SharedLimits
from batchembed.run.placement import Canary, Placement
from batchembed.run.runner import JobRunner

#: Times one slice is re-submitted after its worker process or node died, before the job gives up.
MAX_SLICE_ATTEMPTS = 4
#: The stats a worker hands its driver with every shard (added up into the job's report and summary).
_COUNTERS = (
    "rows_embedded",
    "rows_skipped",
    "rows_failed",
    "rows_truncated",
    "rows_recovered",  # answers an interrupted run left in the journal: "after the interrupted run"
    "rows_resent",
    "tokens",
    "tokens_saved",
    "requests",
)


class EngineError(BatchEmbedError):
    """The Ray engine could not run the job (Ray unreachable, workers dying over and over)."""


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying which extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray, which is not installed: pip install 'batchembed[ray]' "
            "(or run without --engine ray)"
        ) from None
    return ray


def connect(ray: Any, engine: Any) -> bool:
    """Join the Ray cluster (engine.address, else RAY_ADDRESS) or start a local, loopback-only one.

    Returns whether this call connected (and so must disconnect at the end)."""
    if ray.is_initialized():
        return False
    address = engine.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(
                address="local",  # a new Ray of our own, never one that happens to run on this machine
                num_cpus=max(1, int(engine.workers * engine.cpus_per_worker + 0.999)),
                num_gpus=int(engine.workers * engine.gpus_per_worker + 0.999),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise EngineError(f"cannot start or join Ray at {where}: {exc}") from None
    return True


# ------------------------------------------------------------------------------------------ worker


def worker_placement(
    job: JobConfig, part: tuple[int, int], manifest: Manifest, budget: Any, sink, fence: FenceToken | None
) -> Placement:
    """How a worker runs slice ``part``: its units (slice 0 also the retries) under the job-wide budget,
    each written shard handed to ``sink`` for the driver to commit; no signals (Ray ends the process), other
    slices' journals kept, the canary as the driver ran it, nothing published (the driver does)."""
    owns = owned_by(part)
    limits = job.limits
    return Placement(
        role=functools.partial(DriverWorker, manifest, sink, fence),
        units=lambda unit: unit.kind == "retry" or owns(unit.name),
        limits=lambda resolved: SharedLimits(
            budget,
            limits.concurrency,
            resolved.model.requests_per_minute,
            resolved.model.tokens_per_minute,
            limits.max_concurrency,
        ),
        signals=False,
        keeps_journals=True,
        publishes=False,
        canary=Canary.WORKER,
        syncs_sinks=False,  # the driver checks and syncs the sinks
    )


def counters(runner: JobRunner) -> dict[str, Any]:
    """The stats a worker hands its driver, and the width of the vectors (a driver that loads no model
    learns it here)."""
    s = runner.stats
    return {
        **{k: getattr(s, k) for k in _COUNTERS},
        "retries": dict(s.retries),
        "latencies": list(s.latencies),
        "dim": runner.task.vectors.dim if runner.task.vectors is not None else None,
    }


def _delta(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {k: now[k] - before.get(k, 0) for k in _COUNTERS}
    out["retries"] = {k: v - before.get("retries", {}).get(k, 0) for k, v in now["retries"].items()}
    out["latencies"] = now["latencies"][len(before.get("latencies", [])) :]
    out["dim"] = now.get("dim")
    return out


def run_slice(
    job, part: tuple[int, int], manifest: Manifest, budget: Any, retry_failed: bool, fence: FenceToken | None = None
):
    """The Ray task: run slice ``part`` of the job; yield ("record", record, resolves, stats delta)
    per written shard, then ("end", stats delta). ``fence``: the driver's holding of the output's
    lock; every shard this worker makes visible is checked against it first."""
    if job.model.provider == "local" and job.model.threads is None:
        # the embedded model on a worker uses the CPUs Ray gave it, not every core of the machine
        threads = max(1, round(job.engine.cpus_per_worker))
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, threads=threads))
    sink: queue.Queue = queue.Queue()
    placement = worker_placement(job, part, manifest, budget, sink.put, fence)
    runner = build_runner(job, quiet=True, retry_failed=retry_failed, placement=placement)
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["code"] = runner.run()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            sink.put(None)

    thread = threading.Thread(target=main, name=f"batchembed-slice-{part[0]}", daemon=True)
    thread.start()
    sent: dict[str, Any] = {}
    while (item := sink.get()) is not None:
        record, resolves = item
        now = counters(runner)
        yield ("record", dataclasses.asdict(record), resolves, _delta(now, sent))
        sent = now
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if outcome.get("code") == ExitCode.SERVER_UNREACHABLE:  # an outage past its window stopped the slice early
        expired = runner.watch.expired if runner.watch is not None else None
        raise ServerUnreachable(f"{expired or 'the server stopped answering'}: committed shards are kept; run the "
                                "same command again once it answers")  # fmt: skip
    yield ("end", None, None, _delta(counters(runner), sent))


# ------------------------------------------------------------------------------------------ driver


@contextlib.contextmanager
def ray_session(engine: Any) -> Iterator[None]:
    """Join (or start) Ray in the main thread for the run; leave it after, if this run joined it."""
    ray = import_ray()
    started = connect(ray, engine)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def driver_placement(job: JobConfig) -> Placement:
    """How the driver runs: its stages are Ray tasks over slices of the units, inside a Ray session; the
    canary only for a remote model (the driver loads no local model: every worker checks the one it loads)."""
    return Placement(stages=RayStages, session=functools.partial(ray_session, job.engine), canary=Canary.REMOTE_ONLY)


class RayStages:
    """The driver's stages: Ray tasks over slices of the units; this process commits what they write."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner

    async def run(self, sources, columns, retry_units) -> None:
        """Hand the units to the workers and commit their shards as they come (returns when all are in,
        or once the run is stopped)."""
        if self.runner.files is not None:
            self.runner.files.clear()  # the workers read the inputs: the driver's small files are not needed again
        await asyncio.to_thread(self._dispatch, bool(retry_units))

    def stop(self) -> None:
        """Nothing to do here: the dispatch loop sees ``runner.stopping`` and cancels the tasks."""

    def abandon(self) -> None:
        """Nothing in flight in this process (the workers' requests end with their tasks)."""

    def on_signal(self, sig: int) -> bool:
        return False

    def every_unit_done(self) -> bool:
        return True

    def report(self) -> dict[str, Any]:
        return {}

    def conclude(self, conclude) -> int:
        return conclude()

    def _dispatch(self, retry: bool) -> None:
        ray = import_ray()
        runner = self.runner
        engine = runner.job.engine
        if runner.stats.threads is not None:  # the local model computes on the workers, with their CPUs
            per_worker = runner.job.model.threads or max(1, round(engine.cpus_per_worker))
            runner.stats.threads = engine.workers * per_worker
        budget = (
            ray.remote(JobBudget)
            .options(num_cpus=0)
            .remote(runner.model.requests_per_minute, runner.model.tokens_per_minute)
        )
        task = ray.remote(run_slice).options(
            num_returns="streaming",
            num_cpus=engine.cpus_per_worker,
            num_gpus=engine.gpus_per_worker,
            max_retries=0,  # a dead worker's slice is re-planned here, from the manifest as it is now
        )
        self._run_slices(ray, task, budget, engine.workers, retry)

    def _run_slices(self, ray: Any, task: Any, budget: Any, count: int, retry: bool) -> None:
        fence = self.runner.output.store.lock.token()  # workers write only while this run holds the output
        events: queue.Queue = queue.Queue()
        generators: dict[int, Any] = {}
        attempts: Counter = Counter()

        def pump(index: int, generator: Any) -> None:
            try:
                for ref in generator:
                    events.put((index, generator, "item", ray.get(ref)))
                events.put((index, generator, "done", None))
            except BaseException as exc:
                events.put((index, generator, "error", exc))

        def submit(index: int) -> None:
            snapshot = dataclasses.replace(self.runner.manifest, shards=list(self.runner.manifest.shards))
            snapshot.resolved = list(self.runner.manifest.resolved)
            generator = task.remote(self.runner.job, (index, count), snapshot, budget, retry and index == 0, fence)
            generators[index] = generator
            threading.Thread(target=pump, args=(index, generator), daemon=True).start()

        for index in range(count):
            submit(index)
        active = set(range(count))
        while active:
            if self.runner.stopping is not None:
                for generator in generators.values():
                    with contextlib.suppress(Exception):  # already finished or gone
                        ray.cancel(generator, force=True)
                return
            try:
                index, generator, kind, payload = events.get(timeout=0.5)
            except queue.Empty:
                self.runner.progress.refresh()
                continue
            if generator is not generators[index]:
                continue  # a late event of a slice attempt already replaced
            if kind == "item":
                self._take(payload)
            elif kind == "done":
                active.discard(index)
            else:
                self._slice_failed(ray, index, payload, attempts)
                submit(index)

    def _slice_failed(self, ray: Any, index: int, exc: BaseException, attempts: Counter) -> None:
        """A slice's task failed: re-raise the job's own error, or count a dead worker and allow a redo."""
        if isinstance(exc, ray.exceptions.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (BatchEmbedError, OSError)):
                raise cause
            raise EngineError(f"a Ray worker failed: {cause or exc}") from None
        attempts[index] += 1
        if attempts[index] >= MAX_SLICE_ATTEMPTS:
            raise EngineError(
                f"the worker running slice {index} died {attempts[index]} times ({type(exc).__name__}); giving up. "
                "Committed shards are kept: run the same command again to resume."
            )
        self.runner.progress.line(
            f"a Ray worker died ({type(exc).__name__}); its slice {index} resumes on another worker"
        )

    def _take(self, payload: tuple) -> None:
        """Commit one shard a worker wrote (the commit point), and add up the worker's counters."""
        kind, record, resolves, delta = payload
        if kind == "record" and record["name"] not in {s.name for s in self.runner.manifest.shards}:
            self.runner.output.record(ShardRecord.from_doc(record), resolves)
        s = self.runner.stats
        for key in _COUNTERS:
            setattr(s, key, getattr(s, key) + delta[key])
        s.retries.update(delta["retries"])
        s.latencies.extend(delta["latencies"])
        if self.runner.task.vectors is not None and delta.get("dim"):
            self.runner.task.vectors.learn(delta["dim"])  # for the report: the driver of a local model ran no canary
        self.runner.progress.refresh()
