"""The output's side of a refresh: plan it, start it durably, and finish it by publishing the table.

``JobOutput`` calls these around a run (``input_diff.py`` holds the pure decisions):

1. ``plan`` compares the inputs with the shards' recorded identities (nothing is written);
2. ``held_ids`` reads the ids of the rows the refresh keeps (from the output, not the inputs), so
   the id check needs only the files this refresh reads;
3. ``begin`` refuses a refresh that would remove most of the output (unless allowed), then starts a
   generation: stale shards move to ``retiring``, the manifest is saved (the refresh's first
   durable step) and ``_SUCCESS`` is removed (a glob reader is told the output is changing);
4. ``publish`` (after every unit is committed) makes the Delta table exactly the manifest's shards
   in one commit, then deletes the files it replaced (or keeps them ``output.history_days``).

A crash anywhere leaves the manifest the truth: ``retiring`` files are deleted only once the table
no longer names them, and a publish that already happened is recognised and not repeated.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from batchembed.failpoints import failpoint
from batchembed.human import plural
from batchembed.input.chunks import file_done
from batchembed.input.units import with_tail
from batchembed.output import figures
from batchembed.output.figures import files_record
from batchembed.output.input_diff import (
    InputDiff,
    begin_generation,
    expired,
    needs_new_generation,
    plan_identities,
)
from batchembed.output.layout import FAILED_DIR, SUCCESS, is_shard
from batchembed.output.leaving import guard_leaving
from batchembed.output.manifest import Manifest
from batchembed.output.restore import shard_ids
from batchembed.output.table_view import intact, record_publish, table_view

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.store.base import OutputStore

#: Seconds a file a publish took out of the table is kept at least, for Delta readers that opened an
#: earlier version just before (and for a plain reader of its path): deleted by a later run after that.
RETIRE_GRACE = 600


def kept(manifest: Manifest, diff: InputDiff) -> Manifest:
    """The shards the refresh keeps, as a manifest (what the walk and ``file_done`` see as committed; its
    ``retiring``: the shards whose vectors it may reuse, its ``resolved``: failure files answered)."""
    stale = {s.name for s in diff.stale}
    return Manifest(
        fingerprint=manifest.fingerprint,
        shards=diff.kept(manifest),
        resolved=list(manifest.resolved),
        retiring=manifest.retiring + [s for s in manifest.shards if s.name in stale],
        generation=manifest.generation,
        work=manifest.work,
        adopted=manifest.adopted,  # files others compacted kept shards into (``table_view.intact``)
    )


def work_files(view: Manifest, sources: list[SourceFile]) -> list[SourceFile]:
    """The files this run reads: those not fully held by the shards of ``view`` (``kept``); a file that
    grew comes marked with the rows the output holds of it (``SourceFile.tail``: only its new rows are read)."""
    out = []
    for src in sources:
        committed = {r.start: r for r in view.ranges_of(src.name)}
        if not file_done(src, committed):
            out.append(with_tail(src, committed))
    return out


def held_ids(store: OutputStore, view: Manifest, column: str, work: list[SourceFile]) -> list[tuple[str, pa.Array]]:
    """Ids of the rows the refresh keeps (``view``: ``kept``) and does not read again: [(where, ids)].

    Shards holding rows of a file this run reads are left out (that file's ids are scanned anyway), but
    not those of a file that grew: only its new rows are read."""
    reading = {src.name for src in work if src.tail is None}
    out = []
    kept = view.shards
    compacted = intact(view, [s.name for s in kept])
    covered = {name for g in compacted for name in g.covers}
    for g in compacted:  # the rows of the shards a group covers are in the files others compacted them into
        read_again = [s for s in kept if s.name in g.covers and reading & set(s.inputs)]
        for name in sorted(g.files):
            ids = _ids(store, name, column)
            if read_again:  # their ids are scanned from their input files
                again = pa.concat_arrays([shard_ids(store, s, {w.name: w for w in work}, column) for s in read_again])
                ids = ids.filter(pc.invert(pc.is_in(ids, value_set=again)))
            out.append((f"{name} (compacted from batchembed's shards)", ids))
    for s in kept:
        if reading & set(s.inputs) or s.name in covered:
            continue
        files = ", ".join(s.inputs) or s.name
        # a shard compacted by others, then vacuumed, is gone: a run restores it before it gets here (plan does not)
        with contextlib.suppress(FileNotFoundError):
            if s.rows:
                out.append((f"{files} (already in the output, {s.name})", _ids(store, s.name, column)))
        if s.failed_file and s.failed_file not in view.resolved:
            out.append((f"{files} (failed rows, {s.failed_file})", _ids(store, s.failed_file, "id")))
    return out


def _ids(store: OutputStore, name: str, column: str) -> pa.Array:
    ids = store.read_table(name, columns=[column]).column(0).combine_chunks()
    return ids if pa.types.is_string(ids.type) else ids.cast(pa.string())


def begin(
    store: OutputStore, manifest: Manifest, diff: InputDiff, sources: list[SourceFile], max_removed: float
) -> bool:
    """Start a refresh generation when the inputs changed (True), after the removal guard; else record
    the first run's plan. The manifest is saved before anything else changes. Files proven unchanged
    (touched) get their new identity recorded first, so the next run does not look at them again."""
    if record_touched(manifest, diff):
        manifest.save(store)
    if needs_new_generation(manifest, diff, sources):
        reading = work_files(kept(manifest, diff), sources)  # the ids that leave are counted only if it matters
        guard_leaving(store, manifest, diff, reading, max_removed)
        again = [src.name for src in reading]
        begin_generation(manifest, diff, sources)
        manifest.refresh = files_record(manifest.generation, diff, again)
        manifest.save(store)
        failpoint("refresh-begun")
        store.delete(SUCCESS)
        return True
    if not manifest.work:
        manifest.work = plan_identities(sources)
        manifest.save(store)
    return False


def record_touched(manifest: Manifest, diff: InputDiff) -> bool:
    """Record the identity now of each file proven unchanged (a ``touch``) in the shards and the plan that
    name it; True if any changed."""
    changed = False
    for name, identity in diff.touched.items():
        for s in manifest.shards:
            if name in s.inputs and s.inputs[name] != identity:
                s.inputs[name], changed = identity, True
        if name in manifest.work and manifest.work[name] != identity:
            manifest.work[name], changed = identity, True
    return changed


def describe(record: dict) -> str:
    """One line for the log: what this refresh does (``figures``' record of its generation)."""
    return (
        f"refresh (generation {record.get('generation', 0)}): {figures.describe(record)}; texts already in the "
        "output are reused, not bought"
    )


def protected(manifest: Manifest) -> set[str]:
    """Files the orphan sweep must keep besides the current shards': those still in the table or history."""
    keep: set[str] = set()
    for s in manifest.retiring:
        keep.update(s.owned_files())
    keep.update(name for name, _ in manifest.retired)
    return keep


def publish(
    store: OutputStore, manifest: Manifest, history_days: float, table: Any, say, now: float | None = None
) -> None:
    """Make the table exactly the manifest's shards (compacted ones as the files others made of them:
    ``table_view``), then keep what it replaced for readers still reading the previous version.

    ``table(files, tag, releasing=...)`` publishes; it must be idempotent for the same files and tag (publish/)."""
    tag = manifest.generation + 1  # one publish per generation's content; retry shards re-publish it
    failpoint("before-publish")
    files, releasing = table_view(manifest)
    version = table(files, tag, releasing=releasing)
    record_publish(store.where, manifest, version, tag)
    failpoint("published-before-retire")
    replaced = retire(store, manifest, history_days, tag, now)
    _say_replaced(say, replaced, history_days)


def publish_parts(
    parts: list[tuple[OutputStore, Manifest]], history_days: float, table: Any, say, now: float | None = None
) -> None:
    """``publish`` for a split output: the table is every part's shards, published once, complete;
    then each part's replaced files go (each part's manifest records it)."""
    tag = max(m.generation for _, m in parts) + 1
    failpoint("before-publish")
    table([s for _, m in parts for s in m.shards], tag)  # parts record no table version: they take nothing in
    failpoint("published-before-retire")
    replaced = sum(retire(store, m, history_days, tag, now, own=False) for store, m in parts)
    _say_replaced(say, replaced, history_days)


def retire(
    store: OutputStore, manifest: Manifest, history_days: float, tag: int, now: float | None = None, own: bool = True
) -> int:
    """After a publish: the files the table no longer names are kept for readers of earlier versions and
    deleted by a later run (``sweep``), at least ``RETIRE_GRACE`` seconds later (``history_days`` if
    longer); failure files, which no table names, go now. Returns how many shards (the table's files) were
    replaced: their cut and failed rows' files go with them, but were never in the table.

    ``own``: the manifest is this run's (it is saved: it records the publish); another part's manifest is
    saved only when its files changed state (that part may be running again)."""
    now = time.time() if now is None else now
    current = {name for s in manifest.shards for name in s.owned_files()}
    replaced = [n for s in manifest.retiring for n in s.owned_files() if n not in current]
    drop = due(manifest, history_days, now)  # retired by an earlier run, past their time
    dropped = set(drop)
    manifest.retired = [r for r in manifest.retired if r[0] not in dropped]
    manifest.retired.extend([name, now] for name in replaced if not name.startswith(FAILED_DIR + "/"))
    drop += [n for n in replaced if n.startswith(FAILED_DIR + "/")]
    changed = own or bool(manifest.retiring or drop)
    manifest.retiring = []
    if changed:
        manifest.published = tag
        manifest.save(store)  # the table no longer names them: from now on they may go
    failpoint("retired-before-delete")
    for name in drop:
        store.delete(name)
    return sum(1 for name in replaced if is_shard(name))


def due(manifest: Manifest, history_days: float, now: float) -> list[str]:
    """Retired files whose time is up: kept ``history_days``, and at least ``RETIRE_GRACE`` seconds."""
    return expired(manifest.retired, max(history_days, RETIRE_GRACE / 86400), now)


def sweep(store: OutputStore, manifest: Manifest, history_days: float, now: float | None = None) -> int:
    """At a run's start: delete the retired files whose time is up (a rerun with nothing else to do too).
    The manifest is saved first (it stops naming them), then they go. Returns how many were deleted."""
    drop = due(manifest, history_days, time.time() if now is None else now)
    if drop:
        dropped = set(drop)
        manifest.retired = [r for r in manifest.retired if r[0] not in dropped]
        manifest.save(store)
        for name in drop:
            store.delete(name)
    return len(drop)


def _say_replaced(say, replaced: int, history_days: float) -> None:
    if replaced:
        days = max(history_days, RETIRE_GRACE / 86400)
        kept = f"{history_days:g} days" if history_days > 0 else f"{RETIRE_GRACE // 60:.0f} minutes"
        say(
            f"published the refreshed table: {plural(replaced, 'replaced shard')} taken out of it; "
            f"{'its files stay' if replaced == 1 else 'their files stay'} for readers of earlier versions and are "
            f"deleted by a run at least {kept} from now" + (" (time travel)" if days >= 1 else "")
        )
