"""What varies between the ways a job's units run, handed to the one ``JobRunner`` instead of subclassing it.

A whole run, one ``--shard I/N`` part, a Ray worker's slice, the Ray driver and the batch tier are the
same run — find the inputs, take the output, open the manifest, run the stages over the chunks,
commit units, end — given a different ``Placement``:

=============  ==========  ===============  ===================  ==============  ============
               whole run   ``--shard I/N``  Ray worker           Ray driver      batch tier
=============  ==========  ===============  ===================  ==============  ============
role           WholeRun    SplitPart        DriverWorker         WholeRun        WholeRun
units          all         owned by I       its slice + retries  all             all
limits         the job's   1/N of them      the job-wide budget  the job's       the job's
stages         local       local            local                Ray tasks       batches, then local
signals        handled     handled          (Ray ends it)        handled         handled
journals       cleared     kept (others')   kept (others')       cleared         cleared
publishes      yes         the last part    no (the driver)      yes             once no batch runs
canary         run         run              on a copy, quiet     remote only     when needed
inputs seen    none        none             none                 none            the plan's
=============  ==========  ===============  ===================  ==============  ============

The engines (``run/engines``, ``run/batch``) build placements; ``run/assemble.build_runner`` hands one to the
runner. Like dlt's runnable given its pool, the runner never asks which engine it is.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from batchembed.input.identity import file_identity
from batchembed.output.roles import Role, WholeRun
from batchembed.sending.limits import RateLimits

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.input.units import Unit
    from batchembed.job.resolved import ResolvedJob


class Canary(enum.Enum):
    """How a run checks the server before its first request (``JobRunner.check_server``)."""

    RUN = "run"  # embed the canary text, record what it teaches in the manifest
    WORKER = "worker"  # as the driver ran it, on a copy of its manifest, quietly (never saved)
    REMOTE_ONLY = "remote-only"  # not for a local model (a Ray driver loads none)
    DEFERRED = "deferred"  # not before the run: the stages ask for it when they need it (the batch tier)


class Stages(Protocol):
    """Where a run's stages run: this process's pipeline, Ray tasks, or the provider's batches first."""

    async def run(self, sources: list, columns: list[str], retry_units: list) -> None:
        """Send and commit this run's units (or hand them to whoever does)."""

    def stop(self) -> None:
        """A signal: read and send no more; what is in flight may finish."""

    def abandon(self) -> None:
        """The stop's grace is over: cancel what is still in flight."""

    def on_signal(self, sig: int) -> bool:
        """Handle a first signal entirely (True), or leave it to the runner's stop (False)."""

    def every_unit_done(self) -> bool:
        """Whether this run reached every unit of the job (the table is published only then)."""

    def report(self) -> dict[str, Any]:
        """Sections these stages add to ``_report.json``."""

    def conclude(self, conclude: Callable[[], int]) -> int:
        """The exit code: the run's own ending (``conclude()``: summary, ``_SUCCESS``), which stages may
        precede (batches still running: no ``_SUCCESS``) or follow with their own lines."""


@dataclass(frozen=True)
class SeenInputs:
    """The input files an earlier run of this job read and checked (columns, ids) under the same settings,
    as it recorded them: each file's identity and row count (None where unknown, CSV and JSON Lines). A run
    opens none of them again for its row count, and checks them again only if one changed or was added
    (ids are unique across all of them at once): a batch-tier poll reads no input at all."""

    files: Mapping[str, tuple[dict, int | None]] = field(default_factory=dict)
    #: The copied columns' types as that run settled them from these files and the output's table
    #: (``schema_check.settle_output``): what the shards get when nothing is settled again.
    types: Mapping[str, Any] = field(default_factory=dict)

    def rows(self) -> dict[str, tuple[dict, int]]:
        """Row counts by file name, with the identity they hold for (``discover``'s ``known``)."""
        return {name: (identity, rows) for name, (identity, rows) in self.files.items() if rows is not None}

    def covers(self, sources: list[SourceFile]) -> bool:
        """Whether every file of ``sources`` was seen as it is now (so they were checked together)."""
        return all(
            src.name in self.files and self.files[src.name][0] == file_identity(src.size, src.mtime_ns, src.etag)
            for src in sources
        )

    def unchecked(self, work: list[SourceFile]) -> list[SourceFile]:
        """The files of ``work`` to check (columns, ids) and settle types from: all of them, or none when
        every one was seen as it is now."""
        return [] if self.covers(work) else work


def nothing_seen(runner: Any) -> SeenInputs:
    """No earlier run recorded anything of the inputs: every file is opened and checked."""
    return SeenInputs()


def job_limits(resolved: ResolvedJob) -> RateLimits:
    """The job's own limits: the model's (configured or preset) rates and the job's concurrency."""
    model = resolved.model
    limits = resolved.config.limits
    return RateLimits(model.requests_per_minute, model.tokens_per_minute, limits.concurrency, limits.max_concurrency)


@dataclass(frozen=True)
class Placement:
    """Everything an engine changes about a run (see the table above); the default is a whole run here."""

    #: Who writes the output (``output.roles``): where a commit goes.
    role: Callable[[], Role] = WholeRun
    #: Which of the job's units this run does (None: all of them).
    units: Callable[[Unit], bool] | None = None
    #: Which limits pace its requests.
    limits: Callable[[ResolvedJob], Any] = job_limits
    #: Where its stages run, built from the runner (None: this process's pipeline, ``pipeline.LocalStages``).
    stages: Callable[[Any], Stages] | None = None
    #: Install SIGINT/SIGTERM handlers (only in a process's main thread).
    signals: bool = True
    #: A finished run keeps the answer journals of units it did not run (other parts may have them in flight).
    keeps_journals: bool = False
    #: A finished run publishes the output's table (a part leaves it to the last part to finish).
    publishes: bool = True
    #: How the server is checked before the first request.
    canary: Canary = Canary.RUN
    #: This run checks the job's ``[[sink]]``s before buying and syncs them after publishing (not a Ray worker).
    syncs_sinks: bool = True
    #: Held around the whole run (the Ray driver: joined to the cluster).
    session: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    #: What an earlier run recorded of the inputs it read and checked, given the runner (the batch tier: its
    #: plan's inputs, so a poll reads none of them); read before the output is taken, as a hint bound to each
    #: file's identity.
    seen_inputs: Callable[[Any], SeenInputs] = nothing_seen
