"""Publishing an output's current shards as one Delta Lake commit, and comparing the log with them.

The output directory (or bucket prefix) is the table root: its ``part-*.parquet`` shards are the
table's files and ``_delta_log/`` sits beside ``_manifest.json``. Files are never rewritten; a
publish only writes the next ``_delta_log/N.json``, holding an ``add`` for every listed file the table
lacks and a ``remove`` for every table file no longer listed, so a reader sees either the previous
complete table or the new one. The first publish creates the table (``create_table_with_add_actions``).

Each commit carries the app transaction ``("batchembed", tag)``, tag being the caller's increasing
publish number. delta-rs does not enforce app versions, so :func:`publish` reads and compares first:
the same file set is a no-op (a rerun after a crash that came after the commit); a newer tag already
recorded with another file set is refused. Commits are made with no automatic retry: a racing writer
(``CommitFailedError``) makes us read the table again and decide again, never rebase blindly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa

from batchembed.errors import OutputError, redact
from batchembed.fs.location import Location, locate, register_cloud_secrets
from batchembed.output.layout import is_shard
from batchembed.output.publish.files import TableFile, delta_schema, read_arrow_schema
from batchembed.output.publish.stores import delta_storage_options, table_uri

#: The app id of every batchembed commit's app transaction (``txn`` action).
APP_ID = "batchembed"
#: Reads-and-decides before a publish that keeps losing races gives up.
ATTEMPTS = 8
#: Table properties set at creation. A checkpoint every 10 commits (delta-rs' default: 100) keeps what a
#: reader replays small: on S3, each JSON commit since the last checkpoint is one more GET per table load.
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}
#: A line of the Rust backtrace delta-rs appends to some errors (``3: <unknown>``, ``at ./nptl/...``).
BACKTRACE_LINE = re.compile(r"^(\d+: |at \S+:\d+)")


class PublishRefused(OutputError):
    """The table already records a newer publish (a higher tag) with other files: ours is stale."""


def _deltalake():
    try:
        import deltalake
        import deltalake.exceptions
        import deltalake.transaction
    except ImportError:  # pragma: no cover - a core dependency; only a broken install lands here
        raise OutputError("publishing the Delta table needs the deltalake package: pip install deltalake") from None
    return deltalake


def reason(exc: BaseException) -> str:
    """A delta-rs error as one line: its cause chain (colour codes dropped), no query strings, no secrets.

    delta-rs puts the useful part ("URL scheme is not allowed", "NoSuchBucket") on the lines after the
    first, so they are kept, joined; a URL's query (where a SAS token would travel) is cut."""
    register_cloud_secrets()
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    parts = [p.strip(" \t↳") for p in text.splitlines()]
    parts = [p for p in parts if p and not BACKTRACE_LINE.match(p)]  # a Rust backtrace says nothing to a user
    text = " - ".join(parts) or type(exc).__name__
    text = re.sub(r"(https?://[^\s?]+)\?\S*", r"\1?…", text)
    return redact(text if len(text) <= 400 else text[:400] + "…")


def _resolve(location: Location | str, storage_options: Mapping[str, str] | None) -> tuple[Location, str, dict]:
    where = locate(location, field="output.path") if isinstance(location, str) else location
    options = dict(storage_options) if storage_options is not None else delta_storage_options(where)
    return where, table_uri(where), options


def _open(uri: str, options: dict, version: int | None = None):
    """The table at ``uri`` (its latest version), or None when there is none."""
    dl = _deltalake()
    try:
        return dl.DeltaTable(uri, version=version, storage_options=options or None)
    except dl.exceptions.TableNotFoundError:
        return None
    except Exception as exc:  # network, permissions: delta-rs raises its own tree and bare OSErrors
        raise OutputError(f"{uri}: cannot read the Delta log: {reason(exc)}") from None


def _files_of(table) -> dict[str, int]:
    adds = pa.table(table.get_add_actions())
    return dict(zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist(), strict=True))


def _checked(files: Iterable[TableFile]) -> dict[str, TableFile]:
    wanted: dict[str, TableFile] = {}
    for f in files:
        parts = f.name.replace("\\", "/").split("/")
        if not f.name or f.name.startswith("/") or "://" in f.name or ".." in parts or parts[0].startswith("_"):
            raise ValueError(f"{f.name!r} is not a data file name relative to the table root")
        if f.name in wanted:
            raise ValueError(f"{f.name!r} is listed twice")
        wanted[f.name] = f
    return wanted


def _add_action(f: TableFile, now_ms: int):
    from deltalake.transaction import AddAction

    stats = {"numRecords": f.rows, **(f.stats or {})}
    return AddAction(f.name, f.size, {}, now_ms, True, json.dumps(stats, separators=(",", ":")))


def _commit_properties(tag: int, metadata: Mapping[str, Any] | None):
    from deltalake import CommitProperties, Transaction

    facts = json.loads(redact(json.dumps(dict(metadata or {}), default=str)))
    custom = {"batchembed": facts, "userMetadata": f"batchembed publish {tag}"}
    return CommitProperties(custom_metadata=custom, max_commit_retries=0, app_transactions=[Transaction(APP_ID, tag)])


def _same_schema(ours, table_schema) -> bool:
    return json.loads(ours.to_json()) == json.loads(table_schema.to_json())


#: What a publish is told to make the table: the files, or how to name them from the table's current files
#: (their sizes by name; None when there is no table yet), returning None for "nothing to publish".
Files = Iterable[TableFile] | Callable[[dict[str, int] | None], Iterable[TableFile] | None]


def publish(
    location: Location | str,
    storage_options: Mapping[str, str] | None,
    files: Files,
    *,
    tag: int,
    schema: pa.Schema | None = None,
    metadata: Mapping[str, Any] | None = None,
    releasing: Iterable[str] = (),
) -> int | None:
    """Bring the Delta log at ``location`` to exactly ``files`` in one commit; return the table's version.

    ``files``: every data file of the output now (names relative to the table root), or a function of
    the table's current files giving them (None: nothing to publish, None returned), so a caller that
    needs the table's state to name its files opens the table once, here. ``tag``: the
    caller's publish number, increasing from one publish to the next; recorded as the app transaction
    ``("batchembed", tag)``. ``schema``: the shards' Arrow schema (default: read from the first added
    file's footer; needed when a first publish lists no file). ``metadata``: job facts (JSON values,
    never secrets) recorded in the commit info under ``"batchembed"``. ``storage_options``: delta-rs
    options (None: :func:`delta_storage_options` of ``location``).

    Outcomes: no table yet -> created with ``files`` (version 0); the same file set (names and sizes)
    already published -> nothing written, the current version returned (whatever tag it recorded);
    a tag above ``tag`` recorded with another file set -> ``PublishRefused``; otherwise one commit of
    adds (new names) and removes (names no longer listed). A listed name whose size differs from the
    table's is refused (``OutputError``): a Delta file cannot be replaced under its own name. A file the
    table holds that ``files`` leaves out is taken out of it only if batchembed wrote it (``is_shard``) or
    it is in ``releasing``: another writer's file is never dropped silently (``OutputError``).
    """
    dl = _deltalake()
    from deltalake.transaction import RemoveAction, create_table_with_add_actions

    where, uri, options = _resolve(location, storage_options)
    for _attempt in range(ATTEMPTS):
        table = _open(uri, options)
        if callable(files):
            listed = files(None if table is None else _files_of(table))
            if listed is None:
                return None
            wanted = _checked(listed)
        else:
            wanted = _checked(files)
        now_ms = int(time.time() * 1000)
        adds = [_add_action(f, now_ms) for f in wanted.values()]
        if table is None:
            arrow_schema = schema if schema is not None else _first_schema(where, wanted, "a first publish")
            try:
                create_table_with_add_actions(
                    uri,
                    delta_schema(arrow_schema),
                    adds,
                    mode="error",
                    configuration=TABLE_CONFIGURATION,
                    storage_options=options or None,
                    commit_properties=_commit_properties(tag, metadata),
                )
            except (dl.exceptions.CommitFailedError, dl.exceptions.DeltaError) as exc:
                if _open(uri, options) is not None:  # another writer created it first: decide again
                    continue
                raise OutputError(f"{uri}: cannot create the Delta table: {reason(exc)}") from None
            return 0
        current = _files_of(table)
        version = table.version()
        recorded = table.transaction_version(APP_ID)
        if current == {name: f.size for name, f in wanted.items()}:
            return version
        if recorded is not None and recorded > tag:
            raise PublishRefused(
                f"{uri}: the Delta table (version {version}) was published by a newer run (publish {recorded}, "
                f"ours is {tag}) with other files; not overwriting it"
            )
        strangers = sorted(n for n in current.keys() - wanted.keys() if not is_shard(n) and n not in set(releasing))
        if strangers:
            raise OutputError(
                f"{uri}: the Delta table (version {version}) holds {strangers[0]}, which batchembed did not write "
                "(another writer added it while this run ran): not taking it out. Run the same command again: "
                "the table is checked before anything is bought"
            )
        changed = sorted(n for n in current.keys() & wanted.keys() if current[n] != wanted[n].size)
        if changed:
            raise OutputError(
                f"{uri}: {changed[0]} is in the Delta table with {current[changed[0]]} bytes but the output's "
                f"file has {wanted[changed[0]].size}: a published file cannot be replaced under its own name"
            )
        added = [a for a in adds if a.path not in current]
        if added and schema is None:
            ours = delta_schema(_first_schema(where, {a.path: wanted[a.path] for a in added}, "the new files"))
        else:
            ours = delta_schema(schema) if schema is not None else table.schema()
        # every file replaced (a kept column added or removed): the table takes the new files' schema
        replaced = not (current.keys() & wanted.keys())
        if not _same_schema(ours, table.schema()) and not replaced:
            differs = _schema_diff(ours, table)
            raise OutputError(f"{uri}: the new files' schema differs from the Delta table's: {differs}")
        removed = [
            RemoveAction(path=n, data_change=True, deletion_timestamp=now_ms, size=s, partition_values={})
            for n, s in sorted(current.items())
            if n not in wanted
        ]
        same = _same_schema(ours, table.schema())
        try:
            table.create_write_transaction(
                [*removed, *added] if same else added,  # "overwrite" removes every current file itself
                mode="append" if same else "overwrite",
                schema=table.schema() if same else ours,
                commit_properties=_commit_properties(tag, metadata),
            )
        except dl.exceptions.CommitFailedError:
            continue  # someone committed since we read: read again and decide again
        except Exception as exc:
            raise OutputError(f"{uri}: cannot commit to the Delta log: {reason(exc)}") from None
        return version + 1  # no automatic retry: the commit landed right after the version we read
    raise OutputError(f"{uri}: gave up publishing after {ATTEMPTS} commits lost to concurrent writers")


def _schema_diff(ours, table) -> str:
    """The first column whose type differs between the new files and the table, in a few words."""
    mine = {f["name"]: f for f in json.loads(ours.to_json())["fields"]}
    theirs = {f["name"]: f for f in json.loads(table.schema().to_json())["fields"]}
    for name in [*theirs, *(n for n in mine if n not in theirs)]:
        a, b = mine.get(name), theirs.get(name)
        if a != b:
            show = lambda f: "absent" if f is None else json.dumps(f["type"])  # noqa: E731
            return f"column {name!r} is {show(a)} in the new files, {show(b)} in the table"
    return "their field metadata differ"


def _first_schema(where: Location, wanted: Mapping[str, TableFile], what: str) -> pa.Schema:
    if not wanted:
        raise ValueError(f"{what} lists no file: pass the table's schema")
    return read_arrow_schema(where, min(wanted))


def table_files(location: Location | str, storage_options: Mapping[str, str] | None = None) -> dict[str, int] | None:
    """The files of the table's current version with their sizes in bytes, or None when there is no table."""
    _where, uri, options = _resolve(location, storage_options)
    table = _open(uri, options)
    return None if table is None else _files_of(table)


def table_files_at(
    location: Location | str, storage_options: Mapping[str, str] | None, version: int
) -> dict[str, int] | None:
    """The files of the table's ``version`` with their sizes (None when there is no table)."""
    _where, uri, options = _resolve(location, storage_options)
    table = _open(uri, options, version)
    return None if table is None else _files_of(table)


def table_schema_json(location: Location | str, storage_options: Mapping[str, str] | None = None) -> str | None:
    """The table's current schema as Delta's JSON (None when there is no table)."""
    _where, uri, options = _resolve(location, storage_options)
    table = _open(uri, options)
    return None if table is None else table.schema().to_json()


def check_agrees(
    location: Location | str, storage_options: Mapping[str, str] | None, files: Iterable[TableFile]
) -> list[str]:
    """Where the Delta table's current version disagrees with ``files`` (the output's truth), one line each.

    Empty when they agree (no table and no files agree too). For ``verify``.
    """
    _where, uri, options = _resolve(location, storage_options)
    wanted = _checked(files)
    table = _open(uri, options)
    if table is None:
        return [f"no Delta table at {uri} (no _delta_log/), but the output holds {len(wanted)} files"] if wanted else []
    current, version = _files_of(table), table.version()
    found = [
        f"{name} is in the output but not in the Delta table (version {version})"
        for name in sorted(wanted.keys() - current.keys())
    ]
    found += [
        f"{name} is in the Delta table (version {version}) but not in the output"
        for name in sorted(current.keys() - wanted.keys())
    ]
    found += [
        f"{name}: {current[name]} bytes in the Delta table (version {version}), {wanted[name].size} in the output"
        for name in sorted(current.keys() & wanted.keys())
        if current[name] != wanted[name].size
    ]
    return found


def snapshot(
    location: Location | str, storage_options: Mapping[str, str] | None = None, version: int | None = None
) -> tuple[str, int, dict[str, int], int] | None:
    """The table's identity (its metadata id), a version (default: the latest), that version's files with
    their sizes, and its rows (from the log's statistics); None when there is no table (or no such version).
    For the sinks (``sinks/``)."""
    _where, uri, options = _resolve(location, storage_options)
    try:
        table = _open(uri, options, version)
    except OutputError:
        if version is None:
            raise
        return None  # that version's log is gone (or never was): the caller reloads in full
    if table is None:
        return None
    adds = pa.table(table.get_add_actions(flatten=True))
    rows = sum(n or 0 for n in adds.column("num_records").to_pylist()) if adds.num_rows else 0
    return table.metadata().id, table.version(), _files_of(table), rows
