"""Where the Delta table stands against batchembed's last publish: read before a run buys, by ``plan`` and ``verify``.

The output's table is shared: a lakehouse scheduler compacts it (``OPTIMIZE``, Z-order), vacuums it,
and someone may append to it or delete from it. batchembed records in its manifest the last version of
the log it accounted for (its own publish, or maintenance it took in) with that commit's digest and its
publish tag. :func:`inspect` compares the log with that record:

* ``current`` -- the last commit is the recorded one (one listing and one small read: the cheap path
  of a rerun with nothing to do);
* ``maintained`` -- others committed since, without changing a row: files rewritten with
  ``dataChange = false`` (compaction, Z-order), vacuum and checkpoint commits. The files they wrote
  are :class:`Group` s: each holds exactly the rows of the batchembed shards it ``covers``;
* ``foreign`` -- others changed rows (an append, a delete, an update, an overwrite) or the schema:
  the table no longer equals the inputs and batchembed will not remove others' data;
* ``missing`` -- no ``_delta_log/`` although batchembed published; ``behind`` -- the log ends before
  the recorded version (its last commits were deleted): both are rebuilt from the manifest, the truth;
* ``damaged`` -- a commit file that cannot be read (cut short): named, with how to rebuild;
* ``none`` -- no table and nothing published yet (a first run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchembed.fs.location import Location
from batchembed.output.layout import is_shard
from batchembed.output.publish.delta import table_files_at
from batchembed.output.publish.log import Commit, DamagedLog, commit_name, read_commit, versions

NONE, CURRENT, MAINTAINED, FOREIGN, MISSING, BEHIND, DAMAGED = (
    "none",
    "current",
    "maintained",
    "foreign",
    "missing",
    "behind",
    "damaged",
)


@dataclass
class Group:
    """Files others wrote from batchembed's shards without changing a row: together they hold exactly the
    rows of the shards they ``covers`` (a compaction of three shards into one file is one group)."""

    files: dict[str, dict] = field(default_factory=dict)  # name -> {"size": bytes, "rows": rows or None}
    covers: list[str] = field(default_factory=list)  # batchembed shard file names

    def to_json(self) -> dict:
        """The group as the manifest keeps it."""
        return {"files": self.files, "covers": sorted(self.covers)}

    @classmethod
    def from_json(cls, doc: dict) -> Group:
        """A group from the manifest."""
        return cls(dict(doc.get("files") or {}), list(doc.get("covers") or []))


@dataclass
class TableState:
    """The table against the manifest's record (see the module doc for the kinds)."""

    kind: str
    latest: int | None = None  # the log's last version
    digest: str = ""  # of the last commit file
    tag: int | None = None  # batchembed's last publish tag in the log
    groups: list[Group] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)  # the maintenance commits since the record, described
    problem: str = ""  # what is wrong (missing, behind, damaged, foreign), one clause
    damaged_file: str = ""

    @property
    def refused(self) -> bool:
        """Whether a run must stop before buying (the table is damaged or holds others' changes)."""
        return self.kind in (DAMAGED, FOREIGN)

    @property
    def rebuilt_by_run(self) -> bool:
        """Whether a run rebuilds it from the manifest (the log is gone or ends before batchembed's last publish)."""
        return self.kind in (MISSING, BEHIND)

    def covered(self) -> set[str]:
        """The batchembed shards whose rows the groups' files hold instead of them."""
        return {name for g in self.groups for name in g.covers}

    def record(self) -> dict:
        """What the manifest records once the run has accounted for this state."""
        return {"version": self.latest, "digest": self.digest, "tag": self.tag}


def inspect(
    where: Location,
    record: dict | None,
    adopted: list[dict],
    published_before: bool,
    our_types: Callable[[], dict[str, Any] | None] = lambda: None,
) -> TableState:
    """The table at ``where`` against ``record`` (the manifest's ``table``: version, digest, tag) and the
    groups already taken in (``adopted``). ``published_before``: whether batchembed ever published this
    output (a missing log is then a loss, not a first run). ``our_types()``: the Delta types of the
    output's own shards, asked only when another writer set the table's schema."""
    record = record or {}
    found = versions(where)
    if not found:
        return TableState(MISSING if published_before else NONE, problem="the Delta log (_delta_log/) is missing")
    latest = found[-1]
    try:
        last = read_commit(where, latest)
    except DamagedLog as exc:
        return _damaged(exc)
    except FileNotFoundError:
        return _damaged(DamagedLog(str(where.child(commit_name(latest))), "it vanished while it was read"))
    groups = [Group.from_json(g) for g in adopted]
    recorded, digest, tag = record.get("version"), record.get("digest"), record.get("tag")
    if recorded is not None and latest == recorded and _is_recorded(last, digest, tag):
        return TableState(CURRENT, latest, last.digest, tag, groups)
    if recorded is not None and latest < recorded:
        return TableState(
            BEHIND,
            latest,
            last.digest,
            tag,
            groups,
            problem=f"the Delta log ends at version {latest}, but batchembed's last publish was version {recorded}",
        )
    chain = [last]
    while not _is_base(chain[-1], recorded, digest, tag):
        head = chain[-1]
        if recorded is not None and head.version <= recorded:
            return _damaged(
                DamagedLog(
                    str(where.child(commit_name(head.version))),
                    f"batchembed recorded version {recorded} as its publish {tag}, but this commit is another one "
                    "(replaced or cut short)",
                )
            )
        if head.version - 1 not in found:
            return _foreign_log(where, published_before, head)
        try:
            chain.append(read_commit(where, head.version - 1))
        except (DamagedLog, FileNotFoundError) as exc:
            return _damaged(exc if isinstance(exc, DamagedLog) else DamagedLog(str(exc), "it vanished"))
    return _forward(where, chain, groups, tag, our_types)


def _is_recorded(commit: Commit, digest: str | None, tag: int | None) -> bool:
    return commit.digest == digest if digest else commit.ours and commit.tag == tag


def _is_base(commit: Commit, recorded: int | None, digest: str | None, tag: int | None) -> bool:
    """Whether the backward walk has reached the commit the record names (or, without a record, batchembed's last)."""
    if recorded is None:
        return commit.ours
    return commit.version == recorded and _is_recorded(commit, digest, tag)


def _forward(where: Location, chain: list[Commit], groups: list[Group], tag: int | None, our_types) -> TableState:
    """Apply the commits after the base (``chain``: newest first, the base last) to the groups."""
    base, after = chain[-1], list(reversed(chain[:-1]))
    tag = base.tag if base.ours else tag
    taken: list[str] = []
    undone = _undone(where, base, after)  # others' data changes that later commits took back (a restore)
    for commit in after:
        if commit.ours:  # our own publish after the record (a crash came before the manifest recorded it)
            groups = [g for g in groups if not set(g.files) & set(commit.removes)]
            tag = commit.tag
            continue
        if commit.version in undone:
            taken.append(f"{commit.describe()}, undone")
            continue
        problem = _foreign_change(commit, groups, our_types)
        if problem:
            return TableState(FOREIGN, chain[0].version, chain[0].digest, tag, groups, taken, problem=problem)
        groups = _rearranged(commit, groups)
        taken.append(commit.describe())
    kind = MAINTAINED if taken else CURRENT
    return TableState(kind, chain[0].version, chain[0].digest, tag, groups, taken)


def _undone(where: Location, base: Commit, after: list[Commit]) -> set[int]:
    """The versions of others' data changes whose effect later commits took back: with them the table holds
    the same files as with the other commits alone (an append, then a restore to the version before it).
    Read from the base version's file list only when others changed data at all."""
    dirty = [c.version for c in after if not c.ours and (c.changes_data or c.other)]
    if not dirty:
        return set()
    actual = set(table_files_at(where, None, base.version) or {})
    without = set(actual)
    for commit in after:
        actual = (actual - set(commit.removes)) | set(commit.adds)
        if commit.version not in dirty:
            without = (without - set(commit.removes)) | set(commit.adds)
    return set(dirty) if actual == without else set()


def _foreign_change(commit: Commit, groups: list[Group], our_types) -> str:
    """Why another writer's commit changed the table's rows or schema ('' when it only rearranged files)."""
    if commit.changes_data:
        return f"another writer changed its rows at {commit.describe()}"
    if commit.schema is not None:
        ours = our_types()
        theirs = {f["name"]: f["type"] for f in json.loads(commit.schema).get("fields", [])}
        if ours is not None and theirs != ours:
            return f"another writer changed its schema at {commit.describe()}"
    known = {name for g in groups for name in g.files}
    strangers = [n for n in commit.removes if not is_shard(n) and n not in known]
    if strangers or (commit.adds and not commit.removes):
        return f"another writer rearranged files batchembed did not publish at {commit.describe()}"
    return ""


def _rearranged(commit: Commit, groups: list[Group]) -> list[Group]:
    """The groups after a commit that rewrote files without changing a row (compaction, Z-order)."""
    if not commit.removes and not commit.adds:
        return groups  # vacuum, checkpoint, properties
    removed = set(commit.removes)
    involved = [g for g in groups if set(g.files) & removed]
    merged = Group()
    for g in involved:
        merged.files.update({n: f for n, f in g.files.items() if n not in removed})
        merged.covers += g.covers
    merged.covers += [n for n in removed if is_shard(n)]
    merged.files.update({n: {"size": a["size"], "rows": a["rows"]} for n, a in commit.adds.items()})
    rest = [g for g in groups if g not in involved]
    return [*rest, merged] if merged.files else rest


def _damaged(exc: DamagedLog) -> TableState:
    return TableState(DAMAGED, problem=f"{exc.name} is damaged ({exc.why})", damaged_file=exc.name)


def _foreign_log(where: Location, published_before: bool, head: Commit) -> TableState:
    if published_before:
        problem = "the Delta log no longer holds batchembed's last publish (the log was replaced)"
    else:
        problem = f"a Delta table batchembed did not write is already there ({head.describe()})"
    return TableState(FOREIGN, head.version, head.digest, problem=problem)
