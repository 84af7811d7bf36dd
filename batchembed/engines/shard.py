"""``batchembed run JOB --shard I/N``: this process runs part I of N of one job (a static split).

Part I takes the units whose ordinal is I modulo N (the same split on every run), records them in
its own manifest under its own lock/lease, and paces itself to 1/N of the configured rates (unless
``engine.shard_pacing = "full"``), so N parts together stay inside one account's limits. The part
that finishes last and finds every part complete writes ``_SUCCESS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchembed.output import refresh as output_refresh
from batchembed.output.layout import SUCCESS
from batchembed.output.manifest import Manifest, check_shards, remove_orphans
from batchembed.output.parts import (
    all_complete,
    load_part,
    open_part,
    owned_by,
    parts_left,
    refuse_mixing,
)
from batchembed.sending.limits import RateLimits
from batchembed.output.commit import JobOutput
from batchembed.run.runner import JobRunner
from batchembed.output.store import open_store
from batchembed.output.store.base import OutputStore
from batchembed.output.layout import part_suffix


class PartOutput(JobOutput):
    """The output of part ``(I, N)``: its own lock/lease, manifest, failed rows, report and retry shard."""

    def __init__(self, store: OutputStore, compression: str, part: tuple[int, int]) -> None:
        super().__init__(store, compression)
        self.part = part
        self.owns = owned_by(part)
        tag = part_suffix(part)
        self.failed_name = f"_failed.{tag}.parquet"
        self.report_name = f"_report.{tag}.json"

    def acquire(self, restart: bool) -> None:
        self.store.admit(self.part)  # parts of one split never block each other; every other writer is refused
        refuse_mixing(self.store, self.part)

    def open(self, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        self.manifest = open_part(self.store, fingerprint, restart, self.part)
        self.store.abort_stale_uploads(self.owns)  # this part's own units only: the others may be uploading
        return self.manifest

    def retry_unit_name(self, n: int) -> str:
        return f"part-r{n:05d}-{part_suffix(self.part)}.parquet"

    def complete(self, say: Callable[[str], None]) -> None:
        """Mark this part complete; the part that finds every part complete writes ``_SUCCESS``."""
        self.manifest.complete = True
        self.manifest.save(self.store)
        remove_orphans(self.store, self.manifest, self.owns)
        with self.store.gate():  # one part at a time decides whether the split is complete, and publishes
            self._complete_split(say)

    def _complete_split(self, say: Callable[[str], None]) -> None:
        """Under the output's gate: if every part is complete over the same inputs, publish the whole table
        (idempotent: two parts finishing together publish once) and write ``_SUCCESS``."""
        parts = [(self.store, self.manifest)] + [
            loaded
            for other in range(self.part[1])
            if other != self.part[0] and (loaded := load_part(self.store, (other, self.part[1])))
        ]
        # every part complete, and over the same inputs (a part not yet refreshed holds the old table's rows)
        current = all(m.work == self.manifest.work for _, m in parts)
        if current and all_complete([m for _, m in parts], self.part[1]):
            for store, manifest in parts:  # what _SUCCESS vouches for is there
                check_shards(store, manifest)
            output_refresh.publish_parts(parts, self.history_days, self.table, say)
            self.store.write_bytes(SUCCESS, b"")
            say(f"every part of {self.uri} is complete: wrote {SUCCESS}")
        elif not current:
            say(
                f"part {self.part[0]}/{self.part[1]} is up to date with the inputs; other parts still have to "
                "refresh (the table is published when the last one has)"
            )
        else:
            say(parts_left(self.store, self.part))


class ShardRunner(JobRunner):
    """A ``JobRunner`` confined to part ``shard = (I, N)`` of the job."""

    clears_journals = False  # other parts of the job may have units in flight
    publishes = False  # the part that finds every part complete publishes the whole table

    def __init__(self, *args: Any, shard: tuple[int, int], **kwargs: Any) -> None:
        self.part = shard
        owns = owned_by(shard)
        super().__init__(*args, units=lambda unit: owns(unit.name), **kwargs)
        if self.job.engine.shard_pacing == "share":
            count = shard[1]
            self.limits = RateLimits(
                max(1, self.model.requests_per_minute // count),
                max(1, self.model.tokens_per_minute // count),
                self.job.limits.concurrency,
            )

    def _make_output(self) -> PartOutput:
        output = PartOutput(open_store(self.job), self.job.output.compression, self.part)
        from batchembed.output.publish.table import delta_publisher

        # the part completing the split publishes (and syncs the job's sinks)
        output.table = self._with_sinks(delta_publisher(output.store, self.job))
        output.history_days = self.job.output.history_days
        return output
