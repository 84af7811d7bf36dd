"""A Postgres table with a pgvector column, kept equal to the output's Delta table (psycopg 3).

One sync is one transaction: an advisory lock on the table, the version the table holds read from
the state table ``batchembed_sink_state`` (beside it, same schema), the change computed
(``changes``), the rows written by binary ``COPY`` (into the table itself on a first load or a
reload, else into a temporary staging table followed by one ``INSERT ... ON CONFLICT (id) DO
UPDATE`` and one ``DELETE``), the state row written, commit. A kill at any moment leaves either
the old rows and the old version or the new rows and the new version. The HNSW index (cosine) is
built after a (re)load, never row by row. The DSN comes from the environment; its password is
registered as a secret and never printed. psycopg is imported lazily (the ``sinks`` extra).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchembed.errors import BatchEmbedError, ConfigError, redact, register_secret
from batchembed.failpoints import failpoint
from batchembed.job.config import SinkConfig
from batchembed.sinks import changes
from batchembed.sinks.shape import Expected, SinkShapeError, postgres_refusal, postgres_type

#: The table (in the sink table's schema) recording which Delta version each sink table holds.
STATE_TABLE = "batchembed_sink_state"


class SinkUnavailable(BatchEmbedError):
    """A sink's store cannot be reached or refused the sync: the output is published, the sink is behind."""


@dataclass
class Synced:
    """What one sync did."""

    version: int
    written: int = 0
    deleted: int = 0
    full: bool = False
    reason: str = ""
    moved: bool = True  # False: the sink already held that version


def psycopg_module():
    """psycopg, imported only when a postgres sink is used (the ``sinks`` extra)."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a postgres sink needs psycopg 3: pip install 'batchembed[sinks]'") from None
    return psycopg


class PostgresSink:
    """``[[sink]] kind = "postgres"``: the table ``config.table`` in the database named by ``$dsn_env``."""

    kind = "postgres"

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.table = config.table
        self.name = f"postgres table {config.table}"
        parts = config.table.split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"sink.table {config.table!r}: give a table name or schema.table")
        self.schema = parts[0] if len(parts) == 2 else None

    # ----------------------------------------------------------------------------- connecting

    def connect(self):
        """A connection (``SinkUnavailable`` when the DSN is missing or the server cannot be reached)."""
        psycopg = psycopg_module()
        env = self.config.dsn_env
        dsn = os.environ.get(env)
        if not dsn:
            raise SinkUnavailable(f"{self.name}: ${env} is not set (it holds the connection string)")
        register_secret(dsn)
        try:
            register_secret(psycopg.conninfo.conninfo_to_dict(dsn).get("password"))
        except psycopg.ProgrammingError:
            raise SinkUnavailable(f"{self.name}: ${env} is not a valid connection string") from None
        try:
            return psycopg.connect(dsn, connect_timeout=10)
        except psycopg.Error as exc:
            raise SinkUnavailable(f"{self.name}: cannot connect: {_reason(exc)}") from None

    def _ident(self, name: str | None = None):
        from psycopg import sql

        if name is None:
            return sql.Identifier(*self.table.split("."))
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)

    # ------------------------------------------------------------------------------ inspecting

    def _columns(self, conn) -> tuple[dict[str, str], list[str]] | None:
        """The table's columns (name -> type) and primary key, or None when it does not exist."""
        found = conn.execute("SELECT to_regclass(%s)::oid", [self._quoted()]).fetchone()[0]
        if found is None:
            return None
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [found],
        ).fetchall()
        primary = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary",
            [found],
        ).fetchall()
        return dict(rows), [r[0] for r in primary]

    def _quoted(self) -> str:
        return ".".join('"' + p.replace('"', '""') + '"' for p in self.table.split("."))

    def check(self, shape: Expected) -> None:
        """Refuse (``SinkShapeError``) an existing table of another shape; ``SinkUnavailable`` if unreachable."""
        with self.connect() as conn:
            self._check(conn, shape)

    def _check(self, conn, shape: Expected) -> bool:
        found = self._columns(conn)
        if found is None:
            return False
        why = postgres_refusal(self.table, shape, *found)
        if why:
            raise SinkShapeError(why)
        return True

    def held(self, conn=None) -> changes.Held:
        """The Delta table and version this table holds (recorded by the last sync)."""
        if conn is None:
            with self.connect() as conn:
                return self.held(conn)
        state = conn.execute("SELECT to_regclass(%s)", [self._state_quoted()]).fetchone()[0]
        if state is None:
            return changes.Held()
        from psycopg import sql

        row = conn.execute(
            sql.SQL("SELECT delta_table, delta_version FROM {} WHERE sink_table = %s").format(self._ident(STATE_TABLE)),
            [self.table],
        ).fetchone()
        return changes.Held(*row) if row else changes.Held()

    def _state_quoted(self) -> str:
        return f'"{self.schema}".{STATE_TABLE}' if self.schema else STATE_TABLE

    # -------------------------------------------------------------------------------- syncing

    def sync(self, where, options, shape: Expected, columns: changes.Shape, say) -> Synced | None:
        """Bring the table to the Delta table's current version in one transaction (None: no table yet)."""
        psycopg = psycopg_module()
        try:
            with self.connect() as conn:
                self._syncing = conn
                try:
                    with conn.transaction():
                        return self._sync(conn, where, options, shape, columns, say)
                finally:
                    self._syncing = None
        except psycopg.Error as exc:
            raise SinkUnavailable(f"{self.name}: {_reason(exc)}") from None

    @property
    def syncing(self) -> bool:
        """Whether a sync is under way (a stopped run gives it the grace)."""
        return getattr(self, "_syncing", None) is not None

    def cancel(self) -> None:
        """Cancel the sync under way, from another thread (a stopped run's grace is over): its transaction
        rolls back, the table stays at the version it held, the next run or ``sync`` brings it up."""
        conn = getattr(self, "_syncing", None)
        if conn is not None:
            conn.cancel_safe(timeout=5)

    def _sync(self, conn, where, options, shape: Expected, columns: changes.Shape, say) -> Synced | None:
        from psycopg import sql

        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"batchembed sink {self.table}"])
        exists = self._check(conn, shape)
        held = self.held(conn) if exists else changes.Held()
        change = changes.plan(where, options, columns, held)
        if change is None:
            return None
        if held.version == change.version and held.table_id == change.table_id and exists:
            return Synced(change.version, moved=False)
        failpoint("sink-postgres-begin")
        target = self._ident()
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns.columns)
        if not exists:  # the primary key is added once the rows are in (one sorted build, not 1M inserts)
            self._create(conn, shape)
        self._ensure_state(conn)
        if change.full:
            if exists:
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._ident(self._index_name())))
                conn.execute(sql.SQL("TRUNCATE {}").format(target))
            # FREEZE: the table was created or truncated in this transaction, so its rows are written frozen
            written = self._copy(conn, target, names, shape, changes.upsert_batches(where, change, columns), True)
            failpoint("sink-postgres-copied")
            if not exists:
                conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, sql.Identifier(columns.id)))
            deleted = 0
        else:
            conn.execute(
                sql.SQL("CREATE TEMP TABLE batchembed_stage ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    names, target
                )
            )
            stage = sql.Identifier("batchembed_stage")
            written = self._copy(conn, stage, names, shape, changes.upsert_batches(where, change, columns))
            failpoint("sink-postgres-copied")
            updates = sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns.columns[1:]
            )
            conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}").format(
                    target, names, names, stage, sql.Identifier(columns.id), updates
                )
            )
            deleted = self._delete(conn, target, shape, change.deleted)
            failpoint("sink-postgres-applied")
        if self.config.index == "hnsw":
            self._index(conn, shape)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (sink_table, delta_table, delta_version, rows_held, synced_at) "
                "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (sink_table) DO UPDATE SET "
                "delta_table = EXCLUDED.delta_table, delta_version = EXCLUDED.delta_version, "
                "rows_held = EXCLUDED.rows_held, synced_at = EXCLUDED.synced_at"
            ).format(self._ident(STATE_TABLE)),
            [self.table, change.table_id, change.version, change.total_rows],
        )
        failpoint("sink-postgres-before-commit")
        return Synced(change.version, written, deleted, change.full, change.reason)

    def _create(self, conn, shape: Expected) -> None:
        from psycopg import sql

        if shape.dim is None:
            raise ConfigError(f"{self.name}: the vectors' dimension is not known yet")
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg_module().Error as exc:
                raise SinkUnavailable(
                    f"{self.name}: the pgvector extension is not installed in this database and cannot be created "
                    f"here ({_reason(exc)}); ask its owner to run CREATE EXTENSION vector"
                ) from None
        if self.schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        id_name, id_kind = shape.id
        cols = [sql.SQL("{} {} NOT NULL").format(sql.Identifier(id_name), sql.SQL(postgres_type(id_name, id_kind)))]
        cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(postgres_type(n, k))) for n, k in shape.kept]
        cols.append(sql.SQL("{} vector({})").format(sql.Identifier(shape.vector), sql.Literal(shape.dim)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(self._ident(), sql.SQL(", ").join(cols)))

    def _ensure_state(self, conn) -> None:
        from psycopg import sql

        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (sink_table text PRIMARY KEY, delta_table text NOT NULL, "
                "delta_version bigint NOT NULL, rows_held bigint, synced_at timestamptz)"
            ).format(self._ident(STATE_TABLE))
        )

    def _index_name(self) -> str:
        return f"{self.table.split('.')[-1]}_hnsw"[:63]

    def _index(self, conn, shape: Expected) -> None:
        """The HNSW (cosine) index, built once the rows are in (a no-op when it exists)."""
        from psycopg import sql

        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw ({} vector_cosine_ops)").format(
                sql.Identifier(self._index_name()), self._ident(), sql.Identifier(shape.vector)
            )
        )

    def _copy(self, conn, target, names, shape: Expected, batches, freeze: bool = False) -> int:
        """Binary COPY of ``batches`` into ``target``; returns the rows written."""
        from psycopg import sql
        from psycopg.copy import QueuedLibpqWriter
        from psycopg.types import TypeInfo

        info = TypeInfo.fetch(conn, "vector")
        conn.adapters.register_dumper(_VectorBytes, _vector_dumper(info.oid))
        types = [postgres_type(n, k) for n, k in (shape.id, *shape.kept)] + [info.oid]
        written = 0
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(
                    target, names, sql.SQL(", FREEZE" if freeze else "")
                ),
                writer=QueuedLibpqWriter(cur),  # a worker thread sends while this one encodes the next rows
            ) as copy,
        ):
            copy.set_types(types)
            for batch in batches:
                cols = [batch.column(i).to_pylist() for i in range(batch.num_columns - 1)]
                for row in zip(*cols, vector_bytes(batch.column(batch.num_columns - 1)), strict=True):
                    copy.write_row(row)
                written += batch.num_rows
        return written

    def _delete(self, conn, target, shape: Expected, ids: pa.Array) -> int:
        """One DELETE of the ids that left the table (sent by binary COPY into a temporary table)."""
        from psycopg import sql

        if not len(ids):
            return 0
        id_name, id_kind = shape.id
        kind = postgres_type(id_name, id_kind)
        conn.execute(sql.SQL("CREATE TEMP TABLE batchembed_gone (id {}) ON COMMIT DROP").format(sql.SQL(kind)))
        with conn.cursor() as cur, cur.copy("COPY batchembed_gone (id) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([kind])
            for value in ids.cast(id_kind).to_pylist():
                copy.write_row((value,))
        cur = conn.execute(
            sql.SQL("DELETE FROM {} t USING batchembed_gone g WHERE t.{} = g.id").format(
                target, sql.Identifier(id_name)
            )
        )
        return cur.rowcount

    # ------------------------------------------------------------------------------ comparing

    def count_and_ids(self, id_name: str) -> tuple[int, list[str]]:
        """Every id the table holds, as text (for ``verify``'s order-independent digest)."""
        from psycopg import sql

        with self.connect() as conn, conn.cursor(name="batchembed_ids") as cur:
            cur.itersize = 50_000
            cur.execute(sql.SQL("SELECT {}::text FROM {}").format(sql.Identifier(id_name), self._ident()))
            ids = [r[0] for r in cur]
        return len(ids), ids

    def rows(self, columns: changes.Shape, ids: list[Any]) -> dict[str, tuple[list, np.ndarray | None]]:
        """The kept values and vector of the rows with ``ids`` (keyed by the id's text)."""
        from psycopg import sql

        kept = sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in columns.kept)
        query = sql.SQL("SELECT {}::text{}, {}::real[] FROM {} WHERE {}::text = ANY(%s)").format(
            sql.Identifier(columns.id), kept, sql.Identifier(columns.vector), self._ident(), sql.Identifier(columns.id)
        )
        with self.connect() as conn:
            found = conn.execute(query, [[str(i) for i in ids]]).fetchall()
        return {r[0]: (list(r[1:-1]), None if r[-1] is None else np.asarray(r[-1], np.float32)) for r in found}


class _VectorBytes(bytes):
    """Marks a vector already in pgvector's binary form (the dumper passes it through)."""


def _vector_dumper(oid: int):
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class VectorBytesDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> Any:
            return obj

    VectorBytesDumper.oid = oid
    return VectorBytesDumper


def vector_bytes(column: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """Each row's vector in pgvector's binary form (dimension, 0, big-endian float32s); None for a null vector."""
    if isinstance(column, pa.ChunkedArray):
        return [v for chunk in column.chunks for v in vector_bytes(chunk)]
    n, d = len(column), column.type.list_size
    values = column.values.slice(column.offset * d, n * d).to_numpy(zero_copy_only=False).reshape(n, d)
    big = np.ascontiguousarray(values, dtype=">f4")
    head = struct.pack(">HH", d, 0)
    rows = [head + big[i].tobytes() for i in range(n)]
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        rows = [r if ok else None for r, ok in zip(rows, valid, strict=True)]
    return rows


def _reason(exc: BaseException) -> str:
    """A psycopg error as one line, with no secret in it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text if len(text) <= 300 else text[:300] + "…")
