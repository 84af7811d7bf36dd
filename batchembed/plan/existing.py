"""``plan`` against an existing output: show the refresh a run would make before it spends anything.

The plan reads the output's manifest (every ``--shard`` part's, merged) without a lock, compares the
inputs with the identities its shards recorded (``refresh.diff_inputs``), reads only the files a run
would read, and lets the task find texts whose vectors are already in the output (the run's own
``OutputCache``), so "texts to buy", tokens and cost are those of the refresh, not of a first run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchembed.job.fingerprint import HasFingerprint, fingerprint_hash, job_fingerprint
from batchembed.output import refresh as output_refresh
from batchembed.output.cache import OutputCache
from batchembed.output.input_diff import diff_inputs
from batchembed.output.manifest import Manifest
from batchembed.plan.touched import touched_files

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.job.config import JobConfig
    from batchembed.job.resolved import ResolvedJob
    from batchembed.output.store.base import OutputStore


@dataclass
class ExistingOutput:
    """An output holding this job's shards."""

    store: OutputStore
    manifest: Manifest
    refresh: dict = field(default_factory=dict)
    _diff: Any = None

    def plan(self, sources: list[SourceFile], task: Any) -> tuple[Manifest, list[SourceFile]]:
        """(the shards a run keeps, as a manifest; the files it reads), and the refresh figures."""
        diff = self._diff = diff_inputs(self.manifest, sources)
        kept = output_refresh.kept(self.manifest, diff)
        reading = output_refresh.work_files(kept, sources)
        if hasattr(task, "output_cache") and reading:
            task.output_cache = OutputCache(
                self.store, self.manifest.shards + self.manifest.retiring, task.job.output.column
            )
        self.refresh = {
            "added": diff.added,
            "changed": diff.changed,
            "removed": diff.removed,
            "unchanged": diff.unchanged,
            **diff.summary(),  # the counts, apart from the lists of names
            "rows_removed": diff.rows_removed,
            "rows_reused": 0,
            "up_to_date": self.manifest.complete and not reading,
        }
        # changed files whose rows the output holds as they are now (a touch): "touched, content unchanged"
        touched = touched_files(self.store, self.manifest, diff.changed, sources, task)
        self.refresh.update(touched=touched, files_touched=len(touched))
        return kept, reading

    def held_ids(self, config: JobConfig, reading: list[SourceFile]) -> list[tuple[str, pa.Array]]:
        """Ids of the rows the refresh keeps (for the id check, as a run makes it)."""
        return output_refresh.held_ids(self.store, self.manifest, self._diff, config.input.id, reading)


def existing_output(resolved: ResolvedJob, task: HasFingerprint) -> ExistingOutput | None:
    """The job's output if it exists and was made with the same settings, else None (a first run)."""
    from batchembed.output.parts import load_whole
    from batchembed.output.store import open_store

    store = open_store(resolved.config)
    try:
        manifest, _ = load_whole(store)
    except Exception:  # no output, or one a run would refuse: plan the job as a first run
        return None
    if manifest is None:
        return None
    if fingerprint_hash(manifest.fingerprint) != fingerprint_hash(job_fingerprint(resolved, task)):
        return None
    return ExistingOutput(store, manifest)
