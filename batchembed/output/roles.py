"""Who writes an output, and what that changes about a commit: a whole run, one ``--shard I/N`` part, or
a Ray worker writing under its driver.

``JobOutput`` is one commit protocol; what differs between writers is handed to it as a *role*:

=================  ===========================  =================================  ==========================
                   ``WholeRun``                 ``SplitPart((I, N))``              ``DriverWorker``
=================  ===========================  =================================  ==========================
admitted as        the output's one writer      part I of a split (its own lease)  fenced by the driver's lock
its manifest       ``_manifest.json``           ``_manifest.shard-000I-of-000N``    the driver's, never saved
a refresh          started here                 the split's plan (``split_plan``)   started by the driver
a written shard    recorded (the commit point)  recorded in the part's manifest    handed to the driver
at the end         report, ``_SUCCESS``         report; the last part publishes     nothing (the driver does)
                                                the table and writes ``_SUCCESS``
=================  ===========================  =================================  ==========================

``SplitPart`` lives in ``split_part`` (with the split's generation plan it follows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from batchembed.errors import ResumeRefused
from batchembed.output import figures
from batchembed.output import refresh as output_refresh
from batchembed.output.input_diff import InputDiff, diff_inputs
from batchembed.output.layout import FAILED, REPORT, SUCCESS, retry_shard
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.output.opening import Preloaded, open_output, remove_orphans
from batchembed.output.parts import finished_split, finished_split_manifest, refuse_mixing
from batchembed.output.store.admission import admit
from batchembed.output.store.fencing import FenceToken, fence_with
from batchembed.output.truncated import rebuild_truncated

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.store.base import OutputStore

Say = Callable[[str], None]
Report = Callable[[int], dict[str, Any]]


class JobOutput(Protocol):
    """What a role uses of the output it serves (``commit.JobOutput``)."""

    store: OutputStore
    manifest: Manifest | None
    preloaded: Preloaded | None
    table: Callable[..., Any] | None
    history_days: float
    diff: InputDiff
    id_column: str | None

    @property
    def uri(self) -> Any: ...


class Role(Protocol):
    """What a kind of writer changes about ``JobOutput``'s protocol."""

    #: Where this writer's gathered failed rows and report go.
    failed_name: str
    report_name: str
    #: What it does with the Delta table before buying: "writes" (repairs it, takes others' maintenance in),
    #: "reads" (checks it, refuses what a part cannot take in), "none" (its driver checked).
    table_access: str

    def acquire(self, output: JobOutput, restart: bool) -> None:
        """Be admitted as this kind of writer (``OutputLocked`` names a live writer that excludes it)."""

    def open(self, output: JobOutput, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        """Load (or create) the manifest this writer records its units in; clean what it does not record."""

    def plan(self, output: JobOutput, sources: list[SourceFile]) -> InputDiff:
        """What changed in the inputs since the output's shards read them (nothing written)."""

    def view(self, output: JobOutput) -> Manifest:
        """The committed units this writer's walk sees (its file list and id check too): what it must not
        write again, and (``retiring``) the shards whose vectors it may reuse."""

    def begin_refresh(self, output: JobOutput, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        """Start a refresh generation if the inputs changed; whether one was started."""

    def refresh_record(self, output: JobOutput) -> dict[str, Any]:
        """The current refresh generation's figures (``figures``; empty for a first run)."""

    def current(self, output: JobOutput) -> list[ShardRecord] | None:
        """The shards of the whole output's table as it stands (None: this writer does not know them)."""

    def record(self, output: JobOutput, record: ShardRecord, resolves: list[str]) -> None:
        """The commit point of one written shard."""

    def close(self, output: JobOutput, report: Report) -> int:
        """The end of the run: gathered failed and cut rows, the report; the rows still failed."""

    def complete(self, output: JobOutput, say: Say) -> None:
        """Every unit of this writer is committed."""

    def retry_unit_name(self, n: int) -> str:
        """The name of this writer's ``n``-th retry shard."""


def close_output(output: JobOutput, report: Report, failed_name: str, report_name: str) -> int:
    """Rebuild the gathered failed rows (``failed_name``) and ``_truncated.parquet``, write the report;
    return the rows still failed. ``report(outstanding)`` builds the report once they are counted."""
    store, manifest = output.store, output.manifest
    if manifest is None:
        return 0
    unresolved = manifest.unresolved_failures()
    outstanding = manifest.unresolved_rows(store)
    if unresolved:
        store.write_table(failed_name, pa.concat_tables(store.read_table(f) for f in unresolved))
    elif store.exists(failed_name):
        store.delete(failed_name)
    rebuild_truncated(store, manifest)
    store.write_bytes(report_name, json.dumps(report(outstanding), indent=2).encode())
    return outstanding


class WholeRun:
    """The output's one writer: a plain run, a ``--restart``, the Ray driver, the batch tier."""

    failed_name = FAILED
    report_name = REPORT
    table_access = "writes"

    def __init__(self) -> None:
        self.split_done = False  # a finished --shard split rerun as a whole run: nothing to do

    def acquire(self, output: JobOutput, restart: bool) -> None:
        admit(output.store, None)  # refused while any other writer (a part of a split too) is live
        self.split_done = not restart and finished_split(output.store)
        if not restart and not self.split_done:  # --restart discards a split output whole
            refuse_mixing(output.store, None)

    def open(self, output: JobOutput, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        if self.split_done:  # a finished split: nothing to do (see ``JobOutput.finished_before``)
            return finished_split_manifest(output.store, fingerprint)
        manifest = open_output(output.store, fingerprint, restart, output.preloaded)
        output.store.abort_stale_uploads()  # a killed run's unfinished shard uploads: no live writer owns them
        return manifest

    def plan(self, output: JobOutput, sources: list[SourceFile]) -> InputDiff:
        return diff_inputs(output.manifest, sources)

    def view(self, output: JobOutput) -> Manifest:
        return output_refresh.kept(output.manifest, output.diff)

    def begin_refresh(self, output: JobOutput, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        if self.split_done:  # a finished split, rerun whole: its parts own it
            if diff.added or diff.changed or diff.removed:
                raise ResumeRefused(
                    f"{output.uri} was written by --shard I/N parts and its inputs changed since "
                    f"({figures.describe(figures.files_record(0, diff, []))}); run every part again to refresh it"
                )
            return False
        return output_refresh.begin(output.store, output.manifest, diff, sources, max_removed)

    def refresh_record(self, output: JobOutput) -> dict[str, Any]:
        return output.manifest.refresh if output.manifest.generation else {}

    def current(self, output: JobOutput) -> list[ShardRecord] | None:
        return output.manifest.shards

    def record(self, output: JobOutput, record: ShardRecord, resolves: list[str]) -> None:
        output.manifest.commit(output.store, record, resolves)

    def close(self, output: JobOutput, report: Report) -> int:
        return close_output(output, report, self.failed_name, self.report_name)

    def complete(self, output: JobOutput, say: Say) -> None:
        """Mark the manifest complete, drop what it does not record, write ``_SUCCESS``."""
        output.manifest.complete = True
        output.manifest.save(output.store)
        remove_orphans(output.store, output.manifest)  # nothing but recorded files once _SUCCESS is there
        output.store.write_bytes(SUCCESS, b"")

    def retry_unit_name(self, n: int) -> str:
        return retry_shard(n)


class DriverWorker:
    """A Ray worker: the driver's manifest as given, each written shard handed to ``sink`` uncommitted.

    The driver holds the lock/lease and records every shard (the commit point), then writes the report
    and ``_failed.parquet``: a worker does none of that."""

    failed_name = FAILED
    report_name = REPORT
    table_access = "none"  # the driver checked the table before handing out slices

    def __init__(
        self, manifest: Manifest, sink: Callable[[tuple[ShardRecord, list[str]]], None], fence: FenceToken | None
    ) -> None:
        self.manifest = manifest  # the driver's, as of the slice's submission; never saved here
        self.sink = sink
        self.fence = fence

    def acquire(self, output: JobOutput, restart: bool) -> None:
        """The driver holds the output's lock/lease for the whole run; this worker writes only while the
        driver's holding (``fence``) still owns the output (checked before each shard becomes visible)."""
        if self.fence is not None:
            fence_with(output.store, self.fence)

    def open(self, output: JobOutput, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        return self.manifest

    def plan(self, output: JobOutput, sources: list[SourceFile]) -> InputDiff:
        return diff_inputs(output.manifest, sources)

    def view(self, output: JobOutput) -> Manifest:
        return output_refresh.kept(output.manifest, output.diff)

    def begin_refresh(self, output: JobOutput, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        return False  # the driver started (or continued) the refresh generation before handing out slices

    def refresh_record(self, output: JobOutput) -> dict[str, Any]:
        return output.manifest.refresh if output.manifest.generation else {}

    def current(self, output: JobOutput) -> list[ShardRecord] | None:
        return None  # the driver knows the table

    def record(self, output: JobOutput, record: ShardRecord, resolves: list[str]) -> None:
        self.sink((record, resolves))  # written but not recorded: the driver commits it

    def close(self, output: JobOutput, report: Report) -> int:
        return 0  # the driver writes the report and _failed.parquet

    def complete(self, output: JobOutput, say: Say) -> None:
        """Nothing: the driver marks the output complete once every slice is committed."""

    def retry_unit_name(self, n: int) -> str:
        return retry_shard(n)
