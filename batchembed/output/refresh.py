"""The output's side of a refresh: plan it, start it durably, and finish it by publishing the table.

``JobOutput`` calls these around a run (``refresh.py`` holds the pure decisions):

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

import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchembed.failpoints import failpoint
from batchembed.human import plural
from batchembed.input.chunks import file_done
from batchembed.output.input_diff import (
    InputDiff,
    begin_generation,
    expired,
    guard_removal,
    needs_new_generation,
    plan_identities,
)
from batchembed.output.layout import FAILED_DIR, SUCCESS, is_shard
from batchembed.output.manifest import Manifest

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.store.base import OutputStore


def kept(manifest: Manifest, diff: InputDiff) -> Manifest:
    """The shards the refresh keeps, as a manifest (what the walk and ``file_done`` see as committed)."""
    return Manifest(fingerprint=manifest.fingerprint, shards=diff.kept(manifest))


def work_files(view: Manifest, sources: list[SourceFile]) -> list[SourceFile]:
    """The files this run reads: those not fully held by the shards of ``view`` (``kept``)."""
    return [src for src in sources if not file_done(src, {r.start: r for r in view.ranges_of(src.name)})]


def held_ids(
    store: OutputStore, manifest: Manifest, diff: InputDiff, column: str, work: list[SourceFile]
) -> list[tuple[str, pa.Array]]:
    """Ids of the rows the refresh keeps and does not read again: [(where, ids)].

    Shards holding rows of a file this run reads are left out (that file's ids are scanned anyway)."""
    reading = {src.name for src in work}
    out = []
    for s in diff.kept(manifest):
        if reading & set(s.inputs):
            continue
        files = ", ".join(s.inputs) or s.name
        if s.rows:
            out.append((f"{files} (already in the output, {s.name})", _ids(store, s.name, column)))
        if s.failed_file and s.failed_file not in manifest.resolved:
            out.append((f"{files} (failed rows, {s.failed_file})", _ids(store, s.failed_file, "id")))
    return out


def _ids(store: OutputStore, name: str, column: str) -> pa.Array:
    ids = store.read_table(name, columns=[column]).column(0).combine_chunks()
    return ids if pa.types.is_string(ids.type) else ids.cast(pa.string())


def begin(
    store: OutputStore, manifest: Manifest, diff: InputDiff, sources: list[SourceFile], max_removed: float
) -> bool:
    """Start a refresh generation when the inputs changed (True), after the removal guard; else record
    the first run's plan. The manifest is saved before anything else changes."""
    if needs_new_generation(manifest, diff, sources):
        guard_removal(manifest, diff, max_removed, str(store.uri))
        begin_generation(manifest, diff, sources)
        manifest.save(store)
        failpoint("refresh-begun")
        store.delete(SUCCESS)
        return True
    if not manifest.work:
        manifest.work = plan_identities(sources)
        manifest.save(store)
    return False


def describe(diff: InputDiff, manifest: Manifest) -> str:
    """One line for the log: what this refresh does."""
    return (
        f"refresh (generation {manifest.generation}): {plural(len(diff.added), 'file')} added, "
        f"{len(diff.changed)} changed, "
        f"{len(diff.removed)} removed, {len(diff.unchanged)} unchanged; {diff.rows_removed:,} rows leave the "
        "output; texts already in it are reused, not bought"
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
    """Make the table exactly the manifest's shards, then drop (or keep for history) what it replaced.

    ``table(files, tag)`` publishes; it must be idempotent for the same files and tag (publish/)."""
    tag = manifest.generation + 1  # one publish per generation's content; retry shards re-publish it
    failpoint("before-publish")
    table(manifest.shards, tag)
    failpoint("published-before-retire")
    replaced = retire(store, manifest, history_days, tag, now)
    _say_replaced(say, replaced, history_days)


def publish_parts(
    parts: list[tuple[OutputStore, Manifest]], history_days: float, table: Any, say, now: float | None = None
) -> None:
    """``publish`` for a split output: the table is every part's shards, published once, complete;
    then each part's replaced files go (each part's manifest records it)."""
    tag = max(m.generation for _, m in parts) + 1
    table([s for _, m in parts for s in m.shards], tag)
    replaced = sum(retire(store, m, history_days, tag, now) for store, m in parts)
    _say_replaced(say, replaced, history_days)


def retire(store: OutputStore, manifest: Manifest, history_days: float, tag: int, now: float | None = None) -> int:
    """After a publish: the files the table no longer names are deleted (or kept ``history_days``),
    once the manifest says so; retired files past their days go too. Returns how many shards (the table's
    files) were replaced: their cut and failed rows' files go with them, but were never in the table."""
    now = time.time() if now is None else now
    current = {name for s in manifest.shards for name in s.owned_files()}
    replaced = [n for s in manifest.retiring for n in s.owned_files() if n not in current]
    if history_days > 0:  # shards and their cut rows stay for time travel; failure files are not in the table
        manifest.retired.extend([name, now] for name in replaced if not name.startswith(FAILED_DIR + "/"))
        drop = [n for n in replaced if n.startswith(FAILED_DIR + "/")]
    else:
        drop = list(replaced)
    drop += expired(manifest.retired, history_days, now)
    dropped = set(drop)
    changed = bool(manifest.retiring or dropped)  # else nothing to record (another part's manifest stays)
    manifest.retired = [r for r in manifest.retired if r[0] not in dropped]
    manifest.retiring = []
    if changed:
        manifest.published = tag
        manifest.save(store)  # the table no longer names them: now they may go
    failpoint("retired-before-delete")
    for name in drop:
        store.delete(name)
    return sum(1 for name in replaced if is_shard(name))


def _say_replaced(say, replaced: int, history_days: float) -> None:
    if replaced:
        kept = f"; kept {history_days:g} days for time travel" if history_days > 0 else ""
        say(f"published the refreshed table: {plural(replaced, 'replaced shard')} removed from it{kept}")
