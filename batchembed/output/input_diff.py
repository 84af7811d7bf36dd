"""The daily refresh: what changed in the inputs since the output was written, and what a run redoes.

The job is its settings (the fingerprint); the input files are its work. Every committed shard
records the identity of each input file it holds rows of (``ShardRecord.inputs``: size and mtime on
disk, size and last-modified time in a bucket). A run compares those with the files it finds:

* a shard whose files are all unchanged is kept, and its files are not read again;
* a shard holding rows of a changed or removed file is *stale*: it leaves the manifest's shards for
  ``retiring`` (still in the published Delta table until this refresh publishes) and its rows are
  redone from the current files; texts whose vectors it holds are not bought again (the output is
  its own cache, ``output.cache``);
* files that no current shard covers (new, changed, or unchanged small files that shared a shard
  with a changed one) are this generation's work;
* a changed CSV or JSON Lines file that only grew keeps its shards and only its new rows are read; one
  that was only touched (the same bytes) is unchanged (``growth.py`` looks; ``compare_inputs`` alone
  is the pure comparison).

A run that finds changes starts a new *generation*: its units are named from a new ordinal range
(``GENERATION_SPAN`` per generation), so no new unit ever takes the name of a kept one, and an
interrupted refresh resumed over the same inputs continues the same generation (same names, its
journal recovered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchembed.errors import ResumeRefused
from batchembed.human import plural
from batchembed.input.identity import file_identity
from batchembed.output.growth import settle

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.manifest import Manifest, ShardRecord

#: Unit ordinals of generation g start at g * GENERATION_SPAN (100 billion rows at 100k rows a shard).
GENERATION_SPAN = 1_000_000


def identity_of(src: SourceFile) -> dict:
    """A file's identity as recorded per shard: size and mtime (ns) on disk (or size and digest), size and
    ETag in a bucket."""
    return file_identity(src.size, src.mtime_ns, src.etag, src.digest)


@dataclass
class InputDiff:
    """The inputs now against what the output holds."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[ShardRecord] = field(default_factory=list)  # committed shards to retire
    rows_coming_back: int = 0  # rows the changed files hold now (where known: Parquet footers)
    grown: list[str] = field(default_factory=list)  # changed files that only grew: only their new rows are read
    touched: dict[str, dict] = field(default_factory=dict)  # files proven unchanged: their identity now
    reshaped: list[str] = field(default_factory=list)  # settings (input.keep) that make every shard rewritten

    def kept(self, manifest: Manifest) -> list[ShardRecord]:
        """The manifest's shards this refresh keeps (all but the stale ones)."""
        stale = {s.name for s in self.stale}
        return [s for s in manifest.shards if s.name not in stale]

    @property
    def rows_removed(self) -> int:
        """Rows of the output that this refresh takes away (its stale shards' rows)."""
        return sum(s.rows for s in self.stale)

    @property
    def rows_at_risk(self) -> int:
        """Rows of the stale shards that hold a changed or removed file: the most that can leave the output."""
        gone = set(self.changed) | set(self.removed)
        return sum(s.rows for s in self.stale if gone & set(s.inputs))

    def summary(self) -> dict[str, int]:
        """Counts of files by state, for reports."""
        return {
            "files_added": len(self.added),
            "files_changed": len(self.changed),
            "files_removed": len(self.removed),
            "files_unchanged": len(self.unchanged),
            "files_grown": len(self.grown),
        }


def recorded_inputs(shards: list[ShardRecord]) -> dict[str, dict]:
    """The identity each input file had when the given shards read it (name -> identity)."""
    found: dict[str, dict] = {}
    for s in shards:
        found.update(s.inputs)
    return found


def known_rows(manifest: Manifest | None) -> dict[str, tuple[dict, int]]:
    """Rows of files fully held by the manifest's shards, with the identity they were read under.

    ``discover`` takes a Parquet file's row count from here when its identity is unchanged, so an
    unchanged file is not opened at all."""
    if manifest is None:
        return {}
    out: dict[str, tuple[dict, int]] = {}
    for s in manifest.shards:
        if s.kind == "range" and s.eof and s.file in s.inputs:
            out[s.file] = (s.inputs[s.file], s.end)
        elif s.kind == "files":
            for name, rows in s.files:
                if name in s.inputs:
                    out[name] = (s.inputs[name], int(rows))
    return out


def diff_inputs(manifest: Manifest, sources: list[SourceFile]) -> InputDiff:
    """Compare the files found now with the identities the manifest's shards recorded, then look closer at
    changed CSV/JSON Lines files: those that only grew or were only touched keep their shards (``growth``)."""
    diff = compare_inputs(manifest, sources)
    recorded = recorded_inputs(manifest.shards)
    diff.changed, diff.grown, diff.touched = settle(diff.changed, sources, manifest.shards, recorded)
    diff.unchanged = sorted([*diff.unchanged, *diff.touched])
    diff.reshaped = manifest.reshaping()
    mark_stale(diff, manifest, sources)
    return diff


def compare_inputs(manifest: Manifest, sources: list[SourceFile]) -> InputDiff:
    """Compare the files found now with the identities the manifest's shards recorded (pure: nothing read)."""
    now = plan_identities(sources)
    # the generation's plan knows the files that hold no rows (no shard records them); shards know the rest
    before = {**manifest.work, **recorded_inputs(manifest.shards)}
    diff = InputDiff()
    for name in sorted(set(now) | set(before)):
        if name not in before:
            diff.added.append(name)
        elif name not in now:
            diff.removed.append(name)
        elif before[name] != now[name]:
            diff.changed.append(name)
        else:
            diff.unchanged.append(name)
    mark_stale(diff, manifest, sources)
    return diff


def mark_stale(diff: InputDiff, manifest: Manifest, sources: list[SourceFile]) -> None:
    """The shards holding a changed or removed file are stale (every shard when a kept column changed: they
    are rewritten from the vectors they hold); the rows their files hold now come back."""
    gone = set(diff.changed) | set(diff.removed)
    diff.stale = [s for s in manifest.shards if diff.reshaped or any(name in gone for name in s.inputs)]
    back = {name for s in diff.stale for name in s.inputs} - set(diff.removed)
    diff.rows_coming_back = sum(src.rows or 0 for src in sources if src.name in back)


def plan_identities(sources: list[SourceFile]) -> dict[str, dict]:
    """What a generation records as the inputs it was planned over."""
    return {src.name: identity_of(src) for src in sources}


def needs_new_generation(manifest: Manifest, diff: InputDiff, sources: list[SourceFile]) -> bool:
    """Whether this run starts a refresh generation (rather than continue or finish the current one).

    The first run of an output is generation 0. A completed output whose inputs changed, or an
    interrupted one whose inputs changed since its generation was planned, starts a new one."""
    if not manifest.shards and not manifest.retiring and manifest.generation == 0:
        return False  # nothing committed yet: the first run (or its resume) plans over what it finds
    if diff.stale:
        return True
    return plan_identities(sources) != manifest.work


def begin_generation(manifest: Manifest, diff: InputDiff, sources: list[SourceFile]) -> None:
    """Start a new generation: retire the stale shards, re-open failures they resolved, record the plan.

    The caller saves the manifest (the refresh's first durable step) before anything else is written."""
    kept = diff.kept(manifest)
    # a retired retry shard answered failures of shards that may be kept: those rows are failed again
    # (and retried by this run, their vectors found in the retiring shard)
    lost = {r for s in diff.stale for r in s.resolves}
    manifest.resolved = [r for r in manifest.resolved if r not in lost]
    manifest.retiring.extend(diff.stale)
    manifest.shards = kept
    manifest.generation += 1
    manifest.work = plan_identities(sources)
    manifest.complete = False
    if diff.reshaped:  # the shards this generation writes hold the job's kept columns now
        manifest.fingerprint = dict(manifest.wanted)
    bought = diff.added or diff.changed or diff.grown or manifest.unresolved_failures()
    manifest.rewrite_only = bool(diff.reshaped) and not bought


def first_ordinal(manifest: Manifest) -> int:
    """Where the unit ordinals of the manifest's current generation start."""
    return manifest.generation * GENERATION_SPAN


def guard_removal(
    manifest: Manifest, diff: InputDiff, max_removed: float, where: str, count: Callable[[], int] | None = None
) -> None:
    """Refuse a refresh that would take away more than ``max_removed`` of the output's rows.

    An upstream step that failed and left an empty or half-written folder looks like most of the
    inputs were deleted; a pipeline should stop there rather than empty its table. What counts is the
    ids that leave: when the stale shards could hold more than the limit, ``count()`` says how many of
    their ids no input holds now (``leaving.ids_leaving``: a changed file is compared by its rows)."""
    held = sum(s.rows for s in manifest.shards)
    if not held:
        return
    removed = diff.rows_at_risk
    if removed > max_removed * held:
        removed = count() if count is not None else diff.rows_removed - diff.rows_coming_back
    if removed <= max_removed * held:
        return
    raise ResumeRefused(
        f"{where}: the inputs no longer hold {removed:,} of the output's {held:,} rows "
        f"({removed / held:.0%}: {plural(len(diff.removed), 'file')} removed, {len(diff.changed)} changed); "
        f"a refresh may remove at most {max_removed:.0%} (output.max_removed). If the inputs are "
        "right, run again with --allow-removal (or set output.max_removed = 1.0)."
    )


def expired(retired: list[list], days: float, now: float | None = None) -> list[str]:
    """Retired files kept longer than ``days``: [name]."""
    now = time.time() if now is None else now
    return [name for name, at in retired if now - at >= days * 86400]
