"""The role of one ``--shard I/N`` part (``roles`` has the protocol and the other writers).

A part has its own lease, manifest, failed rows, report and retry shards; what it shares with the other
parts is the refresh generation (``split_plan``): it follows the plan the output holds for the current
inputs, or writes one under the output's gate, and walks the same view of every part's shards as the
others, so it never numbers again (and writes twice) rows another part holds. The part that finds every
part complete in the same generation publishes the whole table once, counts the refresh's rows by id
and writes ``_SUCCESS``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from batchembed.errors import OutputError
from batchembed.failpoints import failpoint
from batchembed.output import figures
from batchembed.output import refresh as output_refresh
from batchembed.output.input_diff import InputDiff
from batchembed.output.layout import SUCCESS, part_failed, part_report, retry_shard
from batchembed.output.leaving import guard_leaving
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.output.opening import check_shards, remove_orphans
from batchembed.output.parts import all_complete, load_part, load_parts, open_part, owned_by, parts_left, refuse_mixing
from batchembed.output.publish.delta import table_files
from batchembed.output.roles import JobOutput, Report, Say, close_output
from batchembed.output.split_plan import SplitPlan, follows, join, overlapping, propose, view, whole
from batchembed.output.store.admission import admit

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile


class SplitPart:
    """Part ``(I, N)`` of a static split: its own lease, manifest, failed rows, report and retry shards; the
    generation plan of the whole split."""

    def __init__(self, part: tuple[int, int]) -> None:
        self.part = part
        self.owns = owned_by(part)
        self.failed_name = part_failed(part)
        self.report_name = part_report(part)
        self.table_access = "reads"  # the part completing the split publishes; none takes maintenance in
        self.plan_: SplitPlan | None = None  # the generation this part follows
        self.view_: Manifest | None = None  # what its walk sees: every part's shards, as the plan says

    def acquire(self, output: JobOutput, restart: bool) -> None:
        admit(output.store, self.part)  # parts of one split never block each other; every other writer is refused
        refuse_mixing(output.store, self.part)

    def open(self, output: JobOutput, fingerprint: dict[str, Any], restart: bool) -> Manifest:
        manifest = open_part(output.store, fingerprint, restart, self.part)
        output.store.abort_stale_uploads(self.owns)  # this part's own units only: the others may be uploading
        return manifest

    def _parts(self, output: JobOutput) -> list[Manifest]:
        return load_parts(output.store, self.part[1], (self.part, output.manifest))

    def plan(self, output: JobOutput, sources: list[SourceFile]) -> InputDiff:
        """The generation every part follows: the plan the output holds if it is over these inputs, else the
        one this part would write (written by ``begin_refresh``, under the gate); nothing is written here."""
        parts = self._parts(output)
        plan = SplitPlan.read(output.store)
        if follows(plan, parts, sources):
            self.plan_, diff = plan, InputDiff()
        else:
            self.plan_, diff = propose(parts, plan, sources, self.part[1])
        self.view_ = view(self.plan_, parts)
        return diff

    def view(self, output: JobOutput) -> Manifest:
        return self.view_

    def begin_refresh(self, output: JobOutput, diff: InputDiff, sources: list[SourceFile], max_removed: float) -> bool:
        """Under the output's gate: follow the plan the output holds if it is over these inputs, else write a
        new one (after the removal guard, counted over every part's rows); then join it (this part's shards
        the plan does not keep retire). Whether this part started a refresh generation."""
        store = output.store
        with store.gate():
            parts = self._parts(output)
            previous = SplitPlan.read(store)
            if follows(previous, parts, sources):
                plan = previous
            else:
                plan, diff = propose(parts, previous, sources, self.part[1])
                if plan.generation > max(m.generation for m in parts):  # a new generation
                    reading = output_refresh.work_files(view(plan, parts), sources)
                    guard_leaving(store, whole(parts, previous), diff, reading, max_removed)
                    again = [src.name for src in reading]
                    plan.refresh = figures.files_record(plan.generation, diff, again)
                plan.write(store)
                failpoint("split-planned")
            self.plan_ = plan
        joined = join(output.manifest, plan)
        if joined:
            output.manifest.save(store)
            failpoint("refresh-begun")
            store.delete(SUCCESS)
        self.view_ = view(plan, self._parts(output))
        return joined and plan.generation > 0

    def refresh_record(self, output: JobOutput) -> dict[str, Any]:
        return self.plan_.refresh if self.plan_ is not None else {}

    def current(self, output: JobOutput) -> list[ShardRecord] | None:
        """Every part's shards that the generation keeps or wrote (the table once the split completes)."""
        return view(self.plan_, self._parts(output)).shards

    def record(self, output: JobOutput, record: ShardRecord, resolves: list[str]) -> None:
        output.manifest.commit(output.store, record, resolves)

    def close(self, output: JobOutput, report: Report) -> int:
        return close_output(output, report, self.failed_name, self.report_name)

    def complete(self, output: JobOutput, say: Say) -> None:
        """Mark this part complete; the part that finds every part complete publishes and writes ``_SUCCESS``."""
        output.manifest.complete = True
        output.manifest.save(output.store)
        remove_orphans(output.store, output.manifest, self.owns)
        with output.store.gate():  # one part at a time decides whether the split is complete, and publishes
            self._complete_split(output, say)

    def _complete_split(self, output: JobOutput, say: Say) -> None:
        """Under the output's gate: if every part is complete in the generation the split follows, publish
        the whole table (idempotent: two parts finishing together publish once), count the refresh's rows by
        id, and write ``_SUCCESS``."""
        index, count = self.part
        store = output.store
        parts = [(store, output.manifest)] + [
            loaded for other in range(count) if other != index and (loaded := load_part(store, (other, count)))
        ]
        plan = SplitPlan.read(store) or self.plan_
        # every part in the plan's generation (a part not yet refreshed holds the old table's rows)
        current = all(m.generation == plan.generation and m.work == plan.work for _, m in parts)
        if current and all_complete([m for _, m in parts], count):
            for part_store, manifest in parts:  # what _SUCCESS vouches for is there
                check_shards(part_store, manifest)
            shards = [s for _, m in parts for s in m.shards]
            clash = overlapping(shards)
            if clash:  # never publish a row twice
                raise OutputError(
                    f"{output.uri}: {clash}; the table was not published. Run every part with --restart "
                    "to rebuild this output (and report this)."
                )
            retiring = [s for _, m in parts for s in m.retiring]
            if plan.refresh and "rows" not in plan.refresh:
                published = table_files(store.where)
                if figures.settle(store, plan.refresh, retiring, shards, output.id_column, published):
                    plan.write(store)  # counted once: a rerun after a kill says the same
            output_refresh.publish_parts(parts, output.history_days, output.table, say)
            store.write_bytes(SUCCESS, b"")
            say(f"every part of {output.uri} is complete: wrote {SUCCESS}")
            self._report_whole(output, plan.refresh, figures.current_tokens(shards), say)
        elif not current and (output.manifest.generation, output.manifest.work) != (plan.generation, plan.work):
            say(
                f"part {index}/{count}: the inputs changed while it ran (refresh generation {plan.generation} has "
                f"begun since); run it again (--shard {index}/{count}) to finish the refresh"
            )
        elif not current:
            say(
                f"part {index}/{count} is up to date with the inputs; other parts still have to "
                "refresh (the table is published when the last one has)"
            )
        else:
            say(parts_left(store, self.part))

    def _report_whole(self, output: JobOutput, record: dict[str, Any], tokens: int, say: Say) -> None:
        """The whole output's figures, which the last part alone knows: said, and added to its report."""
        if record:
            say(f"the refreshed table (generation {record.get('generation')}): {figures.describe(record)}")
        say(f"tokens for the table's current rows: {tokens:,}")
        raw = output.store.read_bytes(self.report_name)
        if raw is None:
            return
        doc = json.loads(raw)
        doc["refresh"] = record
        doc["tokens_for_current_rows"] = tokens
        output.store.write_bytes(self.report_name, json.dumps(doc, indent=2).encode())

    def retry_unit_name(self, n: int) -> str:
        return retry_shard(n, self.part)
