"""A LanceDB table kept equal to the output's Delta table, on a local disk or in a bucket.

The version a LanceDB table holds is recorded in the table itself: after each sync, a tag
``batchembed-<delta table id>-<delta version>`` names the Lance version that holds exactly that Delta
version. A sync first returns the table to its last tagged version when anything was committed
after it (a sync killed between its commit and its tag), then applies the change: a first load or
a reload is one overwrite commit; otherwise ``merge_insert(id).when_matched_update_all()
.when_not_matched_insert_all()`` of the changed rows, and a delete of the ids that left, then the
tag. Whatever the kill, the tag and the rows agree, and a rerun applies the change exactly once.
Rows stream in as record batches. lancedb is imported lazily (the ``sinks`` extra).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from batchembed.errors import ConfigError, redact
from batchembed.failpoints import failpoint
from batchembed.fs.location import Location, locate
from batchembed.job.config import SinkConfig
from batchembed.output.publish.stores import delta_storage_options, table_uri
from batchembed.sinks import changes
from batchembed.sinks.postgres import SinkUnavailable, Synced
from batchembed.sinks.shape import Expected, SinkShapeError, lance_refusal

#: Tags this module writes start so; the rest names the Delta table and version held.
TAG_PREFIX = "batchembed-"
#: Ids per delete statement (an IN list).
DELETE_IDS = 4096


def lancedb_module():
    """lancedb, imported only when a lancedb sink is used (the ``sinks`` extra)."""
    # Lance's Rust logger prints a WARN line when it creates a table ("No existing dataset"): errors only
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lancedb
    except ImportError:
        raise ConfigError("a lancedb sink needs lancedb: pip install 'batchembed[sinks]'") from None
    return lancedb


class LanceSink:
    """``[[sink]] kind = "lancedb"``: the table ``config.table`` of the database at ``config.uri``."""

    kind = "lancedb"

    def __init__(self, config: SinkConfig, storage) -> None:
        self.config = config
        self.table = config.table
        self.where: Location = locate(config.uri, storage, "sink.uri")
        self.name = f"lancedb table {config.table} at {config.uri}"

    def _db(self):
        lancedb = lancedb_module()
        options = {k.lower(): v for k, v in delta_storage_options(self.where).items()}
        try:
            return lancedb.connect(table_uri(self.where), storage_options=options or None)
        except Exception as exc:
            raise SinkUnavailable(f"{self.name}: cannot open it: {_reason(exc)}") from None

    def _open(self, db):
        """The table, or None when it does not exist."""
        try:
            return db.open_table(self.table)
        except ValueError as exc:
            if "not found" in str(exc):
                return None
            raise SinkUnavailable(f"{self.name}: cannot open it: {_reason(exc)}") from None
        except Exception as exc:  # lancedb's errors from Rust: I/O, permissions, a bucket that is not there
            raise SinkUnavailable(f"{self.name}: cannot open it: {_reason(exc)}") from None

    def check(self, shape: Expected) -> None:
        """Refuse (``SinkShapeError``) an existing table of another shape."""
        table = self._open(self._db())
        if table is not None and (why := lance_refusal(self.table, shape, table.schema)):
            raise SinkShapeError(why)

    def held(self, table=None) -> changes.Held:
        """The Delta table and version this table holds (its newest batchembed tag)."""
        if table is None:
            table = self._open(self._db())
            if table is None:
                return changes.Held()
        tag = _last_tag(table)
        return changes.Held() if tag is None else changes.Held(tag[1], tag[2])

    def sync(self, where, options, shape: Expected, columns: changes.Shape, say) -> Synced | None:
        """Bring the table to the Delta table's current version (None: no Delta table yet)."""
        try:
            return self._sync(where, options, shape, columns, say)
        except (SinkUnavailable, SinkShapeError, ConfigError):
            raise
        except OSError as exc:
            raise SinkUnavailable(f"{self.name}: {_reason(exc)}") from None
        except Exception as exc:  # lancedb raises its own errors and plain RuntimeErrors from Rust
            if isinstance(exc, changes.OutputError):
                raise
            raise SinkUnavailable(f"{self.name}: {_reason(exc)}") from None

    def _sync(self, where, options, shape: Expected, columns: changes.Shape, say) -> Synced | None:
        db = self._db()
        table = self._open(db)
        if table is not None and (why := lance_refusal(self.table, shape, table.schema)):
            raise SinkShapeError(why)
        tag = _last_tag(table) if table is not None else None
        held = changes.Held() if tag is None else changes.Held(tag[1], tag[2])
        change = changes.plan(where, options, columns, held)
        if change is None:
            return None
        if table is not None and tag is not None and table.version != tag[0]:
            table.restore(tag[0])  # a sync killed after its commit, before its tag: undo it, then apply again
            failpoint("sink-lancedb-restored")
        elif change.version == held.version and change.table_id == held.table_id:
            return Synced(change.version, moved=False)
        failpoint("sink-lancedb-begin")
        schema = _schema(shape)
        batches = changes.upsert_batches(where, change, columns)
        if change.full or table is None:
            reader = pa.RecordBatchReader.from_batches(schema, _cast(batches, schema))
            table = db.create_table(self.table, data=reader, schema=schema, mode="overwrite")
            written, deleted = change.total_rows, 0
        else:
            written = change.upserts
            if written:
                reader = pa.RecordBatchReader.from_batches(schema, _cast(batches, schema))
                (table.merge_insert(columns.id).when_matched_update_all().when_not_matched_insert_all().execute(reader))
            failpoint("sink-lancedb-merged")
            deleted = self._delete(table, shape, change.deleted)
        failpoint("sink-lancedb-applied")
        _tag(table, f"{TAG_PREFIX}{change.table_id}-{change.version}")
        failpoint("sink-lancedb-tagged")
        return Synced(change.version, written, deleted, change.full, change.reason)

    def _delete(self, table, shape: Expected, ids: pa.Array) -> int:
        """Delete the ids that left the Delta table (a few thousand per statement)."""
        values = ids.to_pylist()
        for at in range(0, len(values), DELETE_IDS):
            listed = ", ".join(_literal(v) for v in values[at : at + DELETE_IDS])
            table.delete(f"{_column(shape.id[0])} IN ({listed})")
        return len(values)

    # ------------------------------------------------------------------------------ comparing

    def count_and_ids(self, id_name: str) -> tuple[int, list[str]]:
        """Every id the table holds, as text (for ``verify``'s order-independent digest)."""
        table = self._open(self._db())
        if table is None:
            return 0, []
        ids = table.search().select([id_name]).limit(None).to_arrow().column(id_name)
        text = ids.cast(pa.string()).to_pylist()
        return len(text), text

    def rows(self, columns: changes.Shape, ids: list[Any]) -> dict[str, tuple[list, np.ndarray | None]]:
        """The kept values and vector of the rows with ``ids`` (keyed by the id's text)."""
        table = self._open(self._db())
        if table is None or not ids:
            return {}
        listed = ", ".join(_literal(v) for v in ids)
        found = (
            table.search().where(f"{_column(columns.id)} IN ({listed})").select(columns.columns).limit(None).to_arrow()
        )
        out = {}
        for row in found.to_pylist():
            vector = row[columns.vector]
            out[str(row[columns.id])] = (
                [row[c] for c in columns.kept],
                None if vector is None else np.asarray(vector, np.float32),
            )
        return out


def _tag(table, name: str) -> None:
    """Tag the table's current version ``name`` (the version it holds), then drop the older batchembed tags
    (they would keep old versions from LanceDB's cleanup)."""
    tags = table.tags.list()
    if name in tags:
        table.tags.update(name, table.version)
    else:
        table.tags.create(name, table.version)
    for old in tags:
        if old.startswith(TAG_PREFIX) and old != name:
            table.tags.delete(old)


def _last_tag(table) -> tuple[int, str, int] | None:
    """(Lance version, Delta table id, Delta version) of the newest batchembed tag, or None."""
    best = None
    for name, info in table.tags.list().items():
        if not name.startswith(TAG_PREFIX):
            continue
        table_id, _, version = name[len(TAG_PREFIX) :].rpartition("-")
        if not version.isdigit():
            continue
        entry = (int(info["version"]), int(version), table_id)
        if best is None or entry[:2] > best[:2]:
            best = entry
    return None if best is None else (best[0], best[2], best[1])


def _schema(shape: Expected) -> pa.Schema:
    if shape.dim is None:
        raise ConfigError("the vectors' dimension is not known yet")
    fields = [pa.field(shape.id[0], shape.id[1], nullable=False)]
    fields += [pa.field(n, k) for n, k in shape.kept]
    fields.append(pa.field(shape.vector, pa.list_(pa.float32(), shape.dim)))
    return pa.schema(fields)


def _cast(batches, schema: pa.Schema):
    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def _column(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"id {value!r} cannot be used in a lancedb filter")
    return str(value)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text if len(text) <= 300 else text[:300] + "…")
