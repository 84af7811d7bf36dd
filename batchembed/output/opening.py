"""Opening an output for a run, and checking what it holds: the manifest read before the lock and reused
when unchanged (``preload``), claimed under the lock (``open_output``: another job's output refused, temp
files and anything the manifest does not record removed, every recorded shard checked), a whole output
removed (``--restart``), orphans swept, a file checked against its recorded size and checksum.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchembed.errors import OutputError, ResumeRefused
from batchembed.fs.atomic import TMP_SUFFIX
from batchembed.job.fingerprint import describe_changes, same_job
from batchembed.output.layout import (
    DELTA_LOG,
    FAILED_DIR,
    MANIFEST,
    SUCCESS,
    TRUNCATED_DIR,
    is_shard,
)
from batchembed.output.manifest import Manifest, MissingFile
from batchembed.output.publish.state import inspect

if TYPE_CHECKING:
    from batchembed.output.store.base import OutputStore


@dataclass
class Preloaded:
    """A manifest read before the output's lock (for the inputs' known rows), with the stamp its files
    had just before the read (``OutputStore.manifest_stamp``)."""

    manifest: Manifest | None
    stamp: Any


def preload(store: OutputStore) -> Preloaded:
    """Read the manifest without the lock, stamped, so that ``open_output`` reuses it when it is unchanged."""
    stamp = store.manifest_stamp()
    return Preloaded(Manifest.load(store), stamp)


def _current(store: OutputStore, preloaded: Preloaded | None) -> Manifest | None:
    """The manifest as it is now: the preloaded one when its files are unchanged since, else read again."""
    if preloaded is not None and preloaded.stamp is not None and store.manifest_stamp() == preloaded.stamp:
        return preloaded.manifest
    return Manifest.load(store)


def open_output(
    store: OutputStore, fingerprint: dict[str, Any], restart: bool, preloaded: Preloaded | None = None
) -> Manifest:
    """Prepare the output for a run (the caller holds its lock) and return its manifest (new or resumed).

    Refuses (``ResumeRefused``) when it holds another job's output, unless ``restart``; claims the
    manifest (re-saves it, so a previous writer can no longer replace it); removes temp files and
    anything the manifest does not record; checks that every recorded shard is still there with
    the recorded size and a readable footer. ``preloaded``: the manifest read before the lock, reused
    when its files have not changed since (one read of the manifest per run start).
    """
    if restart:
        remove_output(store)
        preloaded = None
    store.prepare()
    manifest = _current(store, preloaded)
    if manifest is None:
        stray = [n for n in store.list_names() if is_shard(n) and n.endswith(".parquet")]
        if stray:
            raise ResumeRefused(
                f"{store.uri} holds shards ({stray[0]}, ...) but no {MANIFEST}: it is not a batchembed output "
                "this job can resume. Use another output.path, or --restart to delete them."
            )
        manifest = Manifest(fingerprint=fingerprint)
        manifest.save(store)
        return manifest
    if not same_job(manifest.fingerprint, fingerprint) and not manifest.shards:
        # Nothing committed binds this output yet (a run that failed before its first shard, e.g. on a
        # typo in model.name): the corrected job simply takes it over.
        remove_orphans(store, manifest)
        manifest = Manifest(fingerprint=fingerprint)
        manifest.save(store)
        return manifest
    if not same_job(manifest.fingerprint, fingerprint):
        raise ResumeRefused(different_job(str(store.uri), manifest.fingerprint, fingerprint))
    if not manifest.shards:
        manifest.fingerprint = fingerprint  # no shard holds the old kept columns: nothing to rewrite
    manifest.wanted = fingerprint  # a changed input.keep: the refresh rewrites the shards (``reshaping``)
    manifest.writer = os.urandom(8).hex()
    manifest.save(store)  # also folds the last run's commit journal in: each run starts from one file
    remove_orphans(store, manifest)
    check_shards(store, manifest)
    return manifest


def different_job(where: str, recorded: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """Why a run refuses an output whose committed rows another job's settings made (``plan`` says it too)."""
    changes = describe_changes(recorded, fingerprint)
    return (
        f"{where} holds output of a different job: "
        + "; ".join(changes or ["fingerprint differs"])
        + ". Its vectors were made with other settings, and mixing them would give a table of two jobs "
        "(changed input files are fine: a rerun refreshes the output). Run with --restart to discard "
        "the old output, or use another output.path."
    )


def remove_output(store: OutputStore) -> None:
    """Delete everything batchembed writes in the output (used by --restart); the lock stays."""
    for name in store.list_names():
        if (is_shard(name) or name.startswith("_")) and (
            "/" not in name or name.startswith((FAILED_DIR + "/", TRUNCATED_DIR + "/", DELTA_LOG + "/"))
        ):
            store.delete(name)


def remove_orphans(store: OutputStore, manifest: Manifest, owns: Callable[[str], bool] | None = None) -> None:
    """Delete temp files and shards/failure files that the manifest does not record.

    ``owns(shard file name)`` limits this to the files of one ``--shard I/N`` part (the other parts'
    files, committed or in progress, belong to their own manifests)."""
    known = {name for s in manifest.shards + manifest.retiring for name in s.owned_files()}
    known |= {name for name, _ in manifest.retired}  # replaced files kept for time travel
    for name in store.list_names():
        base = name.rsplit("/", 1)[-1]
        if "/" in name and not name.startswith((FAILED_DIR + "/", TRUNCATED_DIR + "/")):
            continue  # not ours
        if owns is not None and not (is_shard(base) and owns(base.removesuffix(TMP_SUFFIX))):
            continue  # another part's file
        if base.endswith(TMP_SUFFIX) or (is_shard(base) and name not in known):
            store.delete(name)
    if not manifest.complete:
        store.delete(SUCCESS)


def check_shards(store: OutputStore, manifest: Manifest) -> None:
    """Every recorded file exists with its recorded size and a readable Parquet footer -- but a shard whose
    rows another writer compacted into its own files (and maybe vacuumed) is in those files instead."""
    covered: set[str] | None = None
    for s in manifest.shards + manifest.retiring:
        try:
            check_file(store, s.name, s.size, None)  # hashing every shard is `verify`'s job
        except MissingFile:
            covered = compacted_shards(store, manifest) if covered is None else covered
            if s.name not in covered:
                raise
        if s.failed_file:
            check_file(store, s.failed_file, None, None)


def compacted_shards(store: OutputStore, manifest: Manifest) -> set[str]:
    """The shards whose rows files others wrote hold instead of them (compaction taken in, or since)."""
    try:
        state = inspect(store.where, manifest.table, manifest.adopted, published_before=True)
    except OutputError:
        return set()
    return set() if state.refused else state.covered()


def check_file(store: OutputStore, name: str, size: int | None, checksum: str | None) -> None:
    """Raise OutputError unless ``name`` exists, has ``size`` bytes, a Parquet footer and ``checksum``."""
    hint = "Run with --restart to start over."
    path = store.describe(name)
    have = store.size(name)
    if have is None:
        raise MissingFile(f"{path} is recorded in {MANIFEST} but missing. {hint}")
    if size is not None and have != size:
        raise OutputError(f"{path} has {have} bytes, {MANIFEST} recorded {size}: truncated? {hint}")
    try:
        store.parquet_file(name).metadata  # noqa: B018 - reading the footer is the check
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"{path} is not a readable Parquet file ({exc}). {hint}") from None
    try:
        same = checksum is None or store.matches(name, checksum)
    except ValueError as exc:  # a checksum of an algorithm this version does not know
        raise OutputError(f"{path}: {exc}; {MANIFEST} was written by a newer batchembed") from None
    if not same:
        raise OutputError(f"{path} does not match the checksum in {MANIFEST}. {hint}")
