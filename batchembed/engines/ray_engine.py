"""``batchembed run JOB --engine ray``: one job's units spread over Ray workers, committed by the driver.

The driver (this process) does what a plain run does before and after the pipeline — discover the
inputs, take the output's lock/lease, load the manifest, and at the end write the report and
``_SUCCESS`` — but instead of running the pipeline it hands slices of the units to Ray tasks:
slice ``i`` of ``W`` is the units whose ordinal is ``i`` modulo ``W`` (slice 0 also retries the
failed rows of earlier runs). Each task runs the same pipeline (:class:`SliceRunner`) on its units,
writes their shards to the output and *streams back* each written shard's record; the driver records
it in the manifest (the commit point), so a unit is committed as soon as its shard is written.

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
import copy
import dataclasses
import logging
import os
import queue
import threading
from collections import Counter
from typing import Any

from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.run.engines.budget import JobBudget, SharedLimits
from batchembed.output.parts import owned_by
from batchembed.errors import BatchEmbedError, ConfigError
from batchembed.exitcodes import ExitCode
from batchembed.output.commit import JobOutput
from batchembed.run.runner import JobRunner
from batchembed.output.store import open_store
from batchembed.output.store.fencing import FenceToken

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


class SliceOutput(JobOutput):
    """A worker's output: the driver's manifest as given, each written shard handed to ``sink`` uncommitted.

    The driver holds the lock/lease and records every shard (the commit point), then writes the report
    and ``_failed.parquet``: a worker does none of that."""

    def __init__(self, store: Any, compression: str, manifest: Manifest, sink, fence: FenceToken | None) -> None:
        super().__init__(store, compression)
        self.manifest = manifest  # the driver's, as of the slice's submission; never saved here
        self._sink = sink
        self._fence = fence

    def acquire(self, restart: bool) -> None:
        """The driver holds the output's lock/lease for the whole run; this worker writes only while the
        driver's holding (``fence``) still owns the output (checked before each shard becomes visible)."""
        if self._fence is not None:
            self.store.fence_with(self._fence)

    def open(self, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        return self.manifest

    def begin_refresh(self, diff, sources, max_removed: float) -> bool:
        return False  # the driver started (or continued) the refresh generation before handing out slices

    def record(self, record: ShardRecord, resolves: list[str]) -> None:
        self._sink((record, resolves))  # written but not recorded: the driver commits it

    def close(self, report) -> int:
        return 0  # the driver writes the report and _failed.parquet


class SliceRunner(JobRunner):
    """A worker's pipeline: only the units of its slice, each written shard handed to ``sink``."""

    handles_signals = False  # runs in a thread of a Ray worker; Ray ends the process
    clears_journals = False  # other parts of the job may have units in flight
    publishes = False  # the driver publishes the table once every slice is committed
    syncs_sinks = False  # the driver checks and syncs the sinks

    def __init__(
        self,
        *args: Any,
        part: tuple[int, int],
        manifest: Manifest,
        budget: Any,
        sink,
        fence: FenceToken | None = None,
        **kwargs: Any,
    ):
        self._given = (manifest, sink, fence)
        owns = owned_by(part)
        super().__init__(*args, units=lambda unit: unit.kind == "retry" or owns(unit.name), **kwargs)
        model = self.model
        self.limits = SharedLimits(
            budget, self.job.limits.concurrency, model.requests_per_minute, model.tokens_per_minute
        )

    def _make_output(self) -> SliceOutput:
        return SliceOutput(open_store(self.job), self.job.output.compression, *self._given)

    async def _check_server(self, manifest: Manifest) -> None:
        """The canary as the driver ran it, on a copy: a worker never saves the driver's manifest."""
        # accept: the driver's canary already decided
        await self._canary(copy.deepcopy(manifest), accept_change=True, say=lambda _line: None)

    def _conclude(self) -> int:
        return ExitCode.OK

    def counters(self) -> dict[str, Any]:
        """The stats the driver adds up, and the width of the vectors (a driver that loads no model learns it here)."""
        s = self.stats
        return {
            **{k: getattr(s, k) for k in _COUNTERS},
            "retries": dict(s.retries),
            "latencies": list(s.latencies),
            "dim": getattr(self.task, "dim", None),
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
    from batchembed.run.assemble import build_runner

    if job.model.provider == "local" and job.model.threads is None:
        # the embedded model on a worker uses the CPUs Ray gave it, not every core of the machine
        threads = max(1, round(job.engine.cpus_per_worker))
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, threads=threads))
    sink: queue.Queue = queue.Queue()
    runner = build_runner(
        job, quiet=True, retry_failed=retry_failed, runner_class=SliceRunner, part=part, manifest=manifest,
        budget=budget, sink=sink.put, fence=fence,
    )  # fmt: skip
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
        now = runner.counters()
        yield ("record", dataclasses.asdict(record), resolves, _delta(now, sent))
        sent = now
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("end", None, None, _delta(runner.counters(), sent))


# ------------------------------------------------------------------------------------------ driver


class RayDriver(JobRunner):
    """A run whose pipeline is Ray tasks over slices of the units; this process commits what they write."""

    def run(self) -> int:
        """Join (or start) Ray in the main thread, run the job, leave Ray."""
        ray = import_ray()
        started = connect(ray, self.job.engine)
        try:
            return super().run()
        finally:
            if started:
                ray.shutdown()

    async def _check_server(self, manifest: Manifest) -> None:
        """The canary, except for a local model: the driver does not load it (its files' digest is in the
        job's fingerprint already; every worker runs the canary on the model it loads)."""
        if self.model.provider != "local":
            await super()._check_server(manifest)

    async def _pipeline(self, sources, columns, retry_units) -> None:
        if self.files is not None:
            self.files.clear()  # the workers read the inputs: the driver's small files are not needed again
        await asyncio.to_thread(self._dispatch, bool(retry_units))

    def _dispatch(self, retry: bool) -> None:
        ray = import_ray()
        engine = self.job.engine
        if self.stats.threads is not None:  # the local model computes on the workers, with their CPUs
            per_worker = self.job.model.threads or max(1, round(engine.cpus_per_worker))
            self.stats.threads = engine.workers * per_worker
        budget = (
            ray.remote(JobBudget)
            .options(num_cpus=0)
            .remote(self.model.requests_per_minute, self.model.tokens_per_minute)
        )
        task = ray.remote(run_slice).options(
            num_returns="streaming",
            num_cpus=engine.cpus_per_worker,
            num_gpus=engine.gpus_per_worker,
            max_retries=0,  # a dead worker's slice is re-planned here, from the manifest as it is now
        )
        self._run_slices(ray, task, budget, engine.workers, retry)

    def _run_slices(self, ray: Any, task: Any, budget: Any, count: int, retry: bool) -> None:
        fence = self.output.store.lock.token()  # workers write only while this run holds the output
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
            snapshot = dataclasses.replace(self.manifest, shards=list(self.manifest.shards))
            snapshot.resolved = list(self.manifest.resolved)
            generator = task.remote(self.job, (index, count), snapshot, budget, retry and index == 0, fence)
            generators[index] = generator
            threading.Thread(target=pump, args=(index, generator), daemon=True).start()

        for index in range(count):
            submit(index)
        active = set(range(count))
        while active:
            if self.stopping is not None:
                for generator in generators.values():
                    with contextlib.suppress(Exception):  # already finished or gone
                        ray.cancel(generator, force=True)
                return
            try:
                index, generator, kind, payload = events.get(timeout=0.5)
            except queue.Empty:
                self.progress.refresh()
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
        self.progress.line(f"a Ray worker died ({type(exc).__name__}); its slice {index} resumes on another worker")

    def _take(self, payload: tuple) -> None:
        """Commit one shard a worker wrote (the commit point), and add up the worker's counters."""
        kind, record, resolves, delta = payload
        if kind == "record" and record["name"] not in {s.name for s in self.manifest.shards}:
            self.output.record(ShardRecord(**record), resolves)
        s = self.stats
        for key in _COUNTERS:
            setattr(s, key, getattr(s, key) + delta[key])
        s.retries.update(delta["retries"])
        s.latencies.extend(delta["latencies"])
        if getattr(self.task, "dim", 0) is None and delta.get("dim"):
            self.task.dim = delta["dim"]  # for the report: the driver of a local model ran no canary
        self.progress.refresh()
