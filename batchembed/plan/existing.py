"""``plan`` against an existing output: show the refresh a run would make before it spends anything, and
what a run would refuse (another job's settings, the removal guard, an output it cannot resume, the output's
column types).

The plan reads the output's manifest (every ``--shard`` part's, merged) without a lock, compares the
inputs with the identities its shards recorded (``refresh.diff_inputs``), reads only the files a run
would read, and lets the task find texts whose vectors are already in the output (the run's own
``OutputCache``), so "texts to buy", tokens and cost are those of the refresh, not of a first run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from batchembed.errors import OutputError, ResumeRefused
from batchembed.job.fingerprint import HasFingerprint, job_fingerprint, same_job
from batchembed.output import refresh as output_refresh
from batchembed.output.figures import compare, files_record, shard_keys
from batchembed.output.input_diff import diff_inputs, needs_new_generation
from batchembed.output.leaving import guard_leaving
from batchembed.output.manifest import Manifest
from batchembed.output.opening import different_job
from batchembed.output.parts import load_whole
from batchembed.output.publish.delta import table_files
from batchembed.output.publish.state import MAINTAINED
from batchembed.output.schema import SchemaRefused
from batchembed.output.schema_check import settle_output
from batchembed.output.shared_table import refusal, split_refusal, table_state
from batchembed.output.store import open_store
from batchembed.output.table_view import cache_files
from batchembed.plan.report import PlanReport
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
    split: bool = False  # written by --shard parts (their manifests merged)

    def table_check(self) -> tuple[list[str], list[str]]:
        """(what a run would refuse about the output's Delta table, what it would repair or take in)."""
        state = table_state(self.store, self.manifest)
        if state.refused:
            return [refusal(self.store.uri, state)], []
        if state.kind == MAINTAINED and self.split and state.groups:
            return [split_refusal(self.store.uri, state)], []
        if state.rebuilt_by_run:
            return [], [f"{state.problem}: a run rebuilds the Delta table from the manifest (no request)"]
        if state.kind == MAINTAINED:
            self.manifest.adopted = [g.to_json() for g in state.groups]  # as a run takes it in (never saved)
            taken = "; ".join(state.taken)
            return [], [f"the Delta table was maintained by another writer ({taken}): a run takes it in, rows kept"]
        return [], []

    def plan(self, sources: list[SourceFile], task: Any, max_removed: float) -> tuple[Manifest, list[SourceFile]]:
        """(the shards a run keeps, as a manifest; the files it reads), and the refresh figures; ``refused``:
        what the removal guard would say to a run (``max_removed``), as ``run`` says it."""
        diff = self._diff = diff_inputs(self.manifest, sources)
        kept = output_refresh.kept(self.manifest, diff)
        reading = output_refresh.work_files(kept, sources)
        if reading:
            task.reuse_output(self.store, cache_files(kept))
        record = files_record(self.manifest.generation + 1, diff, [src.name for src in reading])
        self.refresh = {
            "added": diff.added,
            "changed": diff.changed,
            "removed": diff.removed,
            "unchanged": diff.unchanged,
            "grown": diff.grown,
            # grown files a stale shard also holds (packed with a changed file): read again whole
            "grown_reread": [g for g in diff.grown if any(g in shard.inputs for shard in diff.stale)],
            "touched": sorted(diff.touched),
            "reshaped": diff.reshaped,
            **diff.summary(),  # the counts, apart from the lists of names
            "read_again_packed": record["files"]["read_again_packed"],
            "rows_reused": 0,
            "up_to_date": self.manifest.complete and not reading and not (diff.removed or diff.stale),
            "refused": None,
        }
        # touched files: CSV/JSON Lines whose bytes are proven the same are unchanged (``diff.touched``, not
        # read); changed files whose rows the output holds as they are now are read again, nothing bought
        reread = touched_files(self.store, self.manifest, diff.changed, sources, task)
        touched = sorted([*diff.touched, *reread])
        self.refresh.update(touched=touched, touched_reread=reread, files_touched=len(touched))
        if needs_new_generation(self.manifest, diff, sources):
            try:
                guard_leaving(self.store, self.manifest, diff, reading, max_removed)
            except ResumeRefused as exc:
                self.refresh["refused"] = str(exc)
        return kept, reading

    def rows_by_id(self, id_column: str, read: list) -> dict[str, int]:
        """The refresh's rows by id: the published rows of the shards it replaces against the rows it reads
        (``read``: frames of (id, text key), ``figures.keys_frame``)."""
        published = table_files(self.store.where) or {}
        replaced = [s for s in output_refresh.kept(self.manifest, self._diff).retiring if s.name in published]
        new = pl.concat([pl.DataFrame(schema={"id": pl.String, "key": pl.Binary}), *read])
        return compare(shard_keys(self.store, replaced, id_column), new)

    def held_ids(self, config: JobConfig, reading: list[SourceFile]) -> list[tuple[str, pa.Array]]:
        """Ids of the rows the refresh keeps (for the id check, as a run makes it)."""
        kept = output_refresh.kept(self.manifest, self._diff)
        return output_refresh.held_ids(self.store, kept, config.input.id, reading)


def existing_output(
    resolved: ResolvedJob, task: HasFingerprint, restart: bool = False
) -> tuple[ExistingOutput | None, str | None]:
    """(the job's output if it holds this job's shards, else None: a first run; what ``run`` would refuse
    about the output, in its own words: another job's settings, an output an older version wrote, a
    damaged manifest). ``restart``: the plan of ``run --restart``, which refuses none of it."""
    store = open_store(resolved.config)
    if restart:
        return None, None
    try:
        manifest, parts = load_whole(store)
    except ResumeRefused as exc:  # written by an older version: run says what to do
        return None, str(exc)
    except OutputError as exc:  # a damaged manifest
        return None, str(exc)
    except Exception:  # no output there (yet), or none readable: plan the job as a first run
        return None, None
    if manifest is None:
        return None, None
    wanted = job_fingerprint(resolved, task)
    if not same_job(manifest.fingerprint, wanted):
        if not manifest.shards:  # nothing committed binds it: the job takes it over
            return None, None
        return None, different_job(str(store.uri), manifest.fingerprint, wanted)
    manifest.wanted = wanted  # a changed input.keep: the run rewrites every shard, buying nothing
    return ExistingOutput(store, manifest, split=bool(parts)), None


def refuse_before_buying(
    report: PlanReport, config: JobConfig, existing: ExistingOutput | None, reading: list[SourceFile]
) -> None:
    """The output's column types, settled as ``run`` settles them before buying: a refusal goes in the plan."""
    store, shards = (existing.store, existing.manifest.shards) if existing is not None else (None, [])
    try:
        settle_output(config, reading, store, shards)
    except SchemaRefused as exc:
        report.refused.append(str(exc))
