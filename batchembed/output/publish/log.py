"""The Delta log read as plain JSON, without delta-rs: which commits exist and what each one did.

A run asks, before it buys anything, whether the table is where batchembed left it. That needs one
listing of ``_delta_log/`` and one small read (the last commit), not a table load; and a commit cut
short or damaged must be named by its file, which delta-rs cannot do (it fails with a backtrace).
Each commit file holds one JSON action per line (``commitInfo``, ``add``, ``remove``, ``metaData``,
``protocol``, ``txn``...); :class:`Commit` keeps what the table-state decisions need.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from batchembed.errors import OutputError
from batchembed.fs.location import Location, first_line
from batchembed.output.layout import DELTA_LOG

#: A commit file of the log: ``00000000000000000007.json``.
COMMIT_FILE = re.compile(r"(\d{20})\.json$")
#: The app id of every batchembed commit's app transaction (``txn`` action).
APP_ID = "batchembed"


class DamagedLog(OutputError):
    """A commit file of the Delta log cannot be read as Delta actions (cut short, not JSON, not actions)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


@dataclass
class Commit:
    """One commit of the log: who made it and which files it added or removed."""

    version: int
    operation: str = ""  # commitInfo.operation: WRITE, OPTIMIZE, VACUUM START, CREATE TABLE...
    tag: int | None = None  # the batchembed app transaction's version, when batchembed made it
    adds: dict[str, dict] = field(default_factory=dict)  # path -> {"size", "rows", "data_change"}
    removes: dict[str, bool] = field(default_factory=dict)  # path -> data_change
    schema: str | None = None  # metaData.schemaString, when the commit sets the table's metadata
    other: list[str] = field(default_factory=list)  # other action kinds (cdc, ...)
    digest: str = ""  # of the commit file's bytes: a commit recorded once is recognised (or not) later

    @property
    def ours(self) -> bool:
        """Whether batchembed made this commit (its app transaction is there)."""
        return self.tag is not None

    @property
    def changes_data(self) -> bool:
        """Whether the commit changes the table's rows (an append, a delete, an overwrite, a merge...).

        Compaction, Z-ordering and the like rewrite files with ``dataChange = false``; vacuum and
        checkpoints add or remove no file at all."""
        return any(a["data_change"] for a in self.adds.values()) or any(self.removes.values()) or "cdc" in self.other

    def describe(self) -> str:
        """What this commit did, in a few words: ``version 5 (WRITE: 1 file added)``."""
        parts = []
        if self.adds:
            parts.append(f"{len(self.adds)} file{'s' if len(self.adds) != 1 else ''} added")
        if self.removes:
            parts.append(f"{len(self.removes)} removed")
        if self.schema is not None:
            parts.append("metadata set")
        what = f"{self.operation or 'a commit'}" + (f": {', '.join(parts)}" if parts else "")
        return f"version {self.version} ({what})"


def log_dir(where: Location) -> Location:
    """The table's ``_delta_log/`` under the output ``where``."""
    return where.child(DELTA_LOG)


def commit_name(version: int) -> str:
    """The relative name of commit ``version``: ``_delta_log/00000000000000000007.json``."""
    return f"{DELTA_LOG}/{version:020d}.json"


def versions(where: Location) -> list[int]:
    """The versions whose commit file is in the log, ascending (empty: no log, or an empty one). One listing."""
    log = log_dir(where)
    try:
        infos = log.fs.get_file_info(pafs.FileSelector(log.fs_path, allow_not_found=True))
    except OSError as exc:
        raise OutputError(f"{log.uri}: cannot list the Delta log: {first_line(exc)}") from None
    found = []
    for info in infos:
        match = COMMIT_FILE.fullmatch(info.base_name)
        if match and info.type == pafs.FileType.File:
            found.append(int(match.group(1)))
    return sorted(found)


def read_commit(where: Location, version: int) -> Commit:
    """Commit ``version`` of the table at ``where``; ``DamagedLog`` naming the file if it cannot be read
    as Delta actions (``FileNotFoundError`` if it is not there)."""
    name = commit_name(version)
    path = where.child(name)
    try:
        with path.fs.open_input_stream(path.fs_path) as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such" in str(exc).lower():
            raise FileNotFoundError(path.uri) from None
        raise OutputError(f"{path.uri}: cannot read it: {first_line(exc)}") from None
    return parse_commit(str(path), version, raw)


def parse_commit(name: str, version: int, raw: bytes) -> Commit:
    """The actions of one commit file's bytes (``DamagedLog`` naming ``name`` when they are not Delta actions)."""
    commit = Commit(version, digest=hashlib.blake2b(raw, digest_size=16).hexdigest())
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        raise DamagedLog(name, "the commit is empty")
    for number, line in enumerate(lines, 1):
        try:
            action = json.loads(line)
        except ValueError:
            cut = "cut short" if number == len(lines) else "not JSON"
            raise DamagedLog(name, f"line {number} is {cut}") from None
        if not isinstance(action, dict) or len(action) != 1:
            raise DamagedLog(name, f"line {number} is not one Delta action")
        _take(commit, *next(iter(action.items())))
    return commit


def _take(commit: Commit, kind: str, body) -> None:
    if not isinstance(body, dict):
        return
    if kind == "commitInfo":
        commit.operation = str(body.get("operation") or "")
    elif kind == "txn" and body.get("appId") == APP_ID:
        commit.tag = int(body.get("version", 0))
    elif kind == "add":
        rows = None
        with contextlib.suppress(ValueError):  # stats are optional; a file without them has no row count here
            rows = json.loads(body.get("stats") or "{}").get("numRecords")
        commit.adds[body["path"]] = {
            "size": int(body.get("size", 0)),
            "rows": rows,
            "data_change": bool(body.get("dataChange", True)),
        }
    elif kind == "remove":
        commit.removes[body["path"]] = bool(body.get("dataChange", True))
    elif kind == "metaData":
        commit.schema = body.get("schemaString")
    elif kind not in ("protocol", "txn", "domainMetadata", "checkpointMetadata", "sidecar"):
        commit.other.append(kind)
