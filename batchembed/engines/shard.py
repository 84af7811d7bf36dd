"""``batchembed run JOB --shard I/N``: this process runs part I of N of one job (a static split).

Part I takes the units whose ordinal is I modulo N (the same split on every run), records them in
its own manifest under its own lock/lease, and paces itself to 1/N of the configured rates (unless
``engine.shard_pacing = "full"``), so N parts together stay inside one account's limits. The part
that finishes last and finds every part complete writes ``_SUCCESS``.
"""

from __future__ import annotations

from typing import Any

from batchembed.checkpoint import SUCCESS, Manifest, remove_orphans
from batchembed.engines.parts import every_part_complete, open_part, owned_by, refuse_mixing
from batchembed.limits import RateLimits
from batchembed.runner import JobRunner
from batchembed.sources import SourceFile
from batchembed.store.base import part_suffix


class ShardRunner(JobRunner):
    """A ``JobRunner`` confined to part ``shard = (I, N)`` of the job."""

    clears_journals = False  # other parts of the job may have units in flight

    def __init__(self, *args: Any, shard: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part = shard
        self.owns = owned_by(shard)
        tag = part_suffix(shard)
        self.failed_name = f"_failed.{tag}.parquet"
        self.report_name = f"_report.{tag}.json"
        if self.job.engine.shard_pacing == "share":
            count = shard[1]
            self.limits = RateLimits(
                max(1, self.model.requests_per_minute // count),
                max(1, self.model.tokens_per_minute // count),
                self.job.limits.concurrency,
            )

    def _acquire(self) -> None:
        self.store.acquire(self.part)  # lease_name((I, N)): parts never block each other
        refuse_mixing(self.store, self.part)

    def _open_manifest(self, sources: list[SourceFile]) -> Manifest:
        return open_part(self.store, self.fingerprint(sources), self.restart, self.part)

    def _pending_rows(self, sources: list[SourceFile], manifest: Manifest) -> int | None:
        return None  # the part's share of the rows is known only once its units are read

    def _retry_unit_name(self, n: int) -> str:
        return f"part-r{n:05d}-{part_suffix(self.part)}.parquet"

    def _chunk_stream(self, sources, columns, retry_units):
        for chunk in super()._chunk_stream(sources, columns, retry_units):
            if self.owns(chunk.unit.name):
                yield chunk

    def _complete(self) -> None:
        """Mark this part complete; the part that finds every part complete writes ``_SUCCESS``."""
        self.manifest.complete = True
        self.manifest.save(self.store)
        remove_orphans(self.store, self.manifest, self.owns)
        if every_part_complete(self.store, self.part[1]):
            self.store.write_bytes(SUCCESS, b"")
            self.progress.line(f"every part of {self.out} is complete: wrote {SUCCESS}")
        else:
            self.progress.line(f"part {self.part[0]}/{self.part[1]} complete; other parts are still running")
