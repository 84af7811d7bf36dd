"""The shared Delta table, checked before anything is bought: repaired, taken in, or refused in one sentence.

Every run (and ``plan``) asks :func:`batchembed.output.publish.state.inspect` where the table stands
against the manifest's record, before the first request:

* **where batchembed left it** -- nothing to do (one listing of ``_delta_log/`` and one small read);
  retired files whose grace is over are deleted (``refresh.sweep``);
* **maintained by others** (compaction, Z-order, vacuum: no row changed) -- taken in: the manifest
  records the files others made and which shards they hold, the table keeps them, and a refresh that
  replaces one of those shards first restores the others as batchembed's files (``restore``);
* **the log missing, or ending before batchembed's last publish** -- rebuilt from the manifest (at
  once when the output is complete, else by this run's publish);
* **damaged, or rows changed by others** (an append, a delete) -- refused: the message names the
  commit file or the change, and what to do (``run --rebuild-table`` rebuilds the log from the manifest).

``--shard`` parts check too but take nothing in (a split has no one manifest to record it); a Ray
worker leaves it to its driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchembed.errors import OutputError, ResumeRefused
from batchembed.input.row_ids import id_column_name
from batchembed.output.layout import DELTA_LOG
from batchembed.output.manifest import Manifest
from batchembed.output.parts import load_whole
from batchembed.output.publish.files import delta_types, read_arrow_schema
from batchembed.output.publish.state import CURRENT, MAINTAINED, MISSING, TableState, inspect
from batchembed.output.publish.table import delta_publisher
from batchembed.output.refresh import sweep
from batchembed.output.restore import restore
from batchembed.output.store import open_store
from batchembed.output.store.admission import admit
from batchembed.output.table_view import groups, intact, record_publish, table_view

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.job.config import JobConfig
    from batchembed.output.input_diff import InputDiff
    from batchembed.output.store.base import OutputStore


class TableRefused(ResumeRefused):
    """The output's Delta table cannot be trusted or holds others' changes: nothing is bought."""


def published_before(manifest: Manifest) -> bool:
    """Whether batchembed ever published this output's table (a missing log is then a loss)."""
    return bool(manifest.table) or manifest.published > 0 or (manifest.complete and bool(manifest.shards))


def our_types(store: OutputStore, manifest: Manifest) -> Callable[[], dict[str, Any] | None]:
    """The Delta types of the output's own shards (read from one footer when asked)."""

    def read() -> dict[str, Any] | None:
        for s in manifest.shards:
            if store.exists(s.name):
                return delta_types(read_arrow_schema(store.where, s.name))
        return None

    return read


def table_state(store: OutputStore, manifest: Manifest) -> TableState:
    """Where the output's table stands against the manifest (read only: for ``run``, ``plan`` and ``verify``)."""
    return inspect(
        store.where, manifest.table, manifest.adopted, published_before(manifest), our_types(store, manifest)
    )


def refusal(uri: str, state: TableState) -> str:
    """The one sentence a run stops with (and ``plan`` warns of) for a refused state, saying what to do."""
    if state.damaged_file:
        return (
            f"{uri}: the Delta table's log cannot be read: {state.problem}. batchembed's manifest is the truth: "
            "run again with --rebuild-table to rebuild the log from it (the table's earlier versions are "
            "forgotten)"
        )
    return (
        f"{uri}: the Delta table no longer holds only what batchembed published: {state.problem}, and batchembed "
        "never drops others' data silently. Undo that change (e.g. DeltaTable(...).restore(VERSION) to the "
        "version before it), or run again with --rebuild-table to make the table exactly batchembed's output "
        "again"
    )


def split_refusal(uri: str, state: TableState) -> str:
    """Why a ``--shard`` part stops when others compacted the table (a split has no one manifest to record it)."""
    return (
        f"{uri}: another writer compacted the Delta table since the split's last publish ({'; '.join(state.taken)}); "
        "a --shard split cannot take that in. Run again with --rebuild-table: it makes the table exactly "
        "batchembed's shards again"
    )


def before_buying(
    store: OutputStore,
    manifest: Manifest,
    diff: InputDiff,
    sources: list[SourceFile],
    job: JobConfig,
    *,
    writes: bool,
    part: bool,
    publisher: Callable[..., int | None],
    say: Callable[[str], None],
) -> None:
    """Check the output's table before the first request; repair, take in or refuse (``TableRefused``).

    ``writes``: this run publishes the table (a whole run, a Ray driver, the batch tier); ``part``: a
    ``--shard`` part (checks, takes nothing in); neither: a Ray worker (its driver checked)."""
    if not writes and not part:
        return
    if writes and store.size(store.manifest_name) is None:  # a finished split rerun whole: its parts' manifests
        writes, part = False, True
    state = table_state(store, manifest)
    if state.refused:
        raise TableRefused(refusal(store.uri, state) + "; nothing was bought")
    if part:
        if state.kind == MAINTAINED and state.groups:
            raise TableRefused(split_refusal(store.uri, state) + " (nothing was bought)")
        return
    changed = False
    if state.kind == MAINTAINED:
        manifest.adopted = [g.to_json() for g in state.groups]
        manifest.table = state.record()
        changed = True
        say(
            f"{store.uri}: the Delta table was maintained by another writer since batchembed's last publish "
            f"({'; '.join(state.taken)}): taken in, its rows kept"
        )
    elif state.kind == CURRENT and manifest.table != state.record() and state.latest is not None:
        manifest.table = state.record()
        changed = True
    elif state.kind == MISSING and manifest.adopted:  # the log is rebuilt with the files others made that are left
        left = [g.to_json() for g in groups(manifest) if all(store.exists(n) for n in g.files)]
        changed, manifest.adopted = left != manifest.adopted, left
    kept = {s.name for s in diff.kept(manifest)}
    changed |= _restore_released(store, manifest, kept, sources, job, say)
    if state.rebuilt_by_run:
        if manifest.complete:
            files, releasing = table_view(manifest)
            tag = manifest.generation + 1
            record_publish(store.where, manifest, publisher(files, tag, releasing=releasing), tag)
            changed = True
            version = manifest.table["version"]
            say(f"{store.uri}: {state.problem}: rebuilt the Delta table from the manifest (version {version})")
        else:
            say(f"{store.uri}: {state.problem}: the Delta table is rebuilt from the manifest when this run publishes")
    if changed:
        manifest.save(store)
    sweep(store, manifest, job.output.history_days)


def _restore_released(
    store: OutputStore, manifest: Manifest, kept: set[str], sources: list[SourceFile], job: JobConfig, say
) -> bool:
    """Shards that a released group covered and that stay, whose files are gone: restored from the group's files."""
    done = False
    for group in groups(manifest):
        if set(group.covers) <= kept:
            continue  # intact: the table keeps its files
        gone = [s for s in manifest.shards if s.name in group.covers and s.name in kept and not store.exists(s.name)]
        if not gone:
            continue
        by_name = {src.name: src for src in sources}
        rows = restore(
            store,
            manifest,
            gone,
            sorted(group.files),
            by_name,
            id_column_name(job),
            job.input.id,
            job.output.compression,
        )
        done = True
        say(
            f"restored {len(gone)} shards ({rows:,} rows) from the files another writer compacted them into, "
            "so the refresh can replace their neighbours (no request)"
        )
    return done


def rebuild_table(job: JobConfig, say: Callable[[str], None]) -> None:
    """``run --rebuild-table``: delete the output's Delta log and write it again from the manifest (every
    part's, for a split). The table's history is lost; others' appends leave it; no data file is deleted.
    A complete output gets its table now; an incomplete one when its run publishes."""
    store = open_store(job)
    admit(store, None)
    try:
        whole = store.size(store.manifest_name) is not None  # else a split: every part's shards, merged
        manifest = Manifest.load(store) if whole else load_whole(store)[0]
        if manifest is None:
            raise OutputError(f"{store.uri}: no batchembed output here yet (no _manifest.json): nothing to rebuild")
        for name in store.list_names():
            if name.startswith(DELTA_LOG + "/"):
                store.delete(name)
        if not manifest.complete:
            say(f"{store.uri}: deleted the Delta log; this run publishes the table again from the manifest")
            return
        manifest.adopted = [g.to_json() for g in intact(manifest) if all(store.exists(n) for n in g.files)]
        files, _releasing = table_view(manifest)
        covered = {n for g in groups(manifest) for n in g.covers}
        missing = [s.name for s in manifest.shards if s.name not in covered and not store.exists(s.name)]
        if missing:
            raise OutputError(
                f"{store.describe(missing[0])} is recorded in the manifest but missing: the table cannot be rebuilt "
                "from it. Run with --restart to rebuild the output (every row is embedded again)"
            )
        tag = manifest.generation + 1
        version = delta_publisher(store, job)(files, tag)
        say(f"{store.uri}: rebuilt the Delta table from the manifest (version {version})")
        if whole:  # a whole run's manifest records it (a split's parts record their next publish)
            record_publish(store.where, manifest, version, tag)
            manifest.save(store)
    finally:
        store.release()
