"""The table batchembed publishes, as its manifest sees it, once others may have compacted it.

Files another writer made from batchembed's shards without changing a row (a compaction, a Z-order)
are kept in the manifest as groups (``Manifest.adopted``, :class:`~batchembed.output.publish.state.Group`).
A group is *intact* while every shard it covers is still one of the output's shards: then the table
holds the group's files instead of those shards, and a publish keeps them. When a refresh replaces a
covered shard, the group is *released*: its files leave the table (never deleted: they are not
batchembed's) and the shards it covered that stay come back as batchembed's own files.

This module says which files the table should hold (:func:`table_view`), which foreign files a publish
may take out of it, which files the output cache may read vectors from (:func:`cache_files`), and
records the version a publish wrote (:func:`record_publish`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchembed.output.publish.files import TableFile
from batchembed.output.publish.log import read_commit
from batchembed.output.publish.state import Group

if TYPE_CHECKING:
    from batchembed.fs.location import Location
    from batchembed.output.manifest import Manifest


@dataclass(frozen=True)
class NamedFile:
    """A file of the output by name (what the output cache reads vectors from)."""

    name: str


def groups(manifest: Manifest) -> list[Group]:
    """The groups the manifest took in."""
    return [Group.from_json(g) for g in manifest.adopted]


def intact(manifest: Manifest, kept: Iterable[str] | None = None) -> list[Group]:
    """The groups whose every covered shard is still one of the output's shards (``kept``: their names;
    default: the manifest's shards now)."""
    names = {s.name for s in manifest.shards} if kept is None else set(kept)
    return [g for g in groups(manifest) if set(g.covers) <= names]


def table_view(manifest: Manifest, shards: list[Any] | None = None) -> tuple[list[Any], set[str]]:
    """(the files the table should hold, the foreign files a publish may take out of it).

    The files: the shards (default the manifest's) that no intact group covers, then the intact groups'
    files (as ``TableFile``: name, size, rows from the log). Foreign files of released groups may go."""
    shards = manifest.shards if shards is None else shards
    keep = intact(manifest, [s.name for s in shards])
    covered = {name for g in keep for name in g.covers}
    files: list[Any] = [s for s in shards if s.name not in covered]
    files += [TableFile(n, int(f["size"]), int(f.get("rows") or 0)) for g in keep for n, f in sorted(g.files.items())]
    kept_files = {n for g in keep for n in g.files}
    releasing = {n for g in groups(manifest) for n in g.files if n not in kept_files}
    return files, releasing


def cache_files(manifest: Manifest) -> list[Any]:
    """Every file the output cache may find vectors in: the shards (kept and retiring) and the files of
    every group taken in (the only copy of a compacted shard's vectors once the lakehouse vacuumed)."""
    return [*manifest.shards, *manifest.retiring, *(NamedFile(n) for g in groups(manifest) for n in sorted(g.files))]


def record_publish(where: Location, manifest: Manifest, version: int | None, tag: int) -> None:
    """After a publish that left the table at ``version``: the manifest records it (with that commit's
    digest) and keeps only the groups still intact. The caller saves the manifest."""
    manifest.adopted = [g.to_json() for g in intact(manifest)]
    if version is None:
        return
    commit = read_commit(where, version)
    manifest.table = {"version": version, "digest": commit.digest, "tag": commit.tag if commit.ours else tag}
