"""Helpers for the sink tests: job files with [[sink]] tables, and the whole-table comparison of a
sink with the output's current Delta version (ids, kept columns, vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from tests.conftest import toml_value


def add_sinks(job: Path, *sinks: dict) -> Path:
    """Append ``[[sink]]`` tables to the job file ``job``."""
    text = job.read_text()
    for sink in sinks:
        text += "\n[[sink]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in sink.items())
    job.write_text(text)
    return job


def table_rows(out: Path, columns: list[str]) -> dict:
    """The Delta table's current rows: {id: (kept values..., vector or None)} (read by its file list)."""
    files = DeltaTable(str(out)).file_uris()
    table = ds.dataset(files, format="parquet").to_table(columns=columns) if files else pa.table({})
    return _rows(table.to_pylist(), columns)


def _rows(records: list[dict], columns: list[str]) -> dict:
    out = {}
    for r in records:
        vector = r[columns[-1]]
        key = r[columns[0]]
        assert key not in out, f"id {key!r} twice"
        out[key] = (*[r[c] for c in columns[1:-1]], None if vector is None else np.asarray(vector, np.float32))
    return out


def postgres_rows(dsn: str, table: str, columns: list[str]) -> dict:
    """Every row of a Postgres sink: {id: (kept values..., vector or None)}."""
    import psycopg
    from psycopg import sql

    cols = [sql.Identifier(c) for c in columns[:-1]] + [sql.SQL("{}::real[]").format(sql.Identifier(columns[-1]))]
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(cols), sql.Identifier(*table.split(".")))
    with psycopg.connect(dsn) as conn:
        found = conn.execute(query).fetchall()
    return _rows([dict(zip(columns, r, strict=True)) for r in found], columns)


def lance_rows(uri: str, table: str, columns: list[str], storage_options: dict | None = None) -> dict:
    """Every row of a LanceDB sink: {id: (kept values..., vector or None)}."""
    import lancedb

    db = lancedb.connect(uri, storage_options=storage_options)
    found = db.open_table(table).search().select(columns).limit(None).to_arrow()
    return _rows(found.to_pylist(), columns)


def assert_same(sink: dict, table: dict) -> None:
    """The sink holds exactly the table's rows: the same ids, kept values and vectors."""
    assert sorted(sink) == sorted(table), "the sink holds exactly the table's ids"
    for key, row in table.items():
        theirs = sink[key]
        assert theirs[:-1] == row[:-1], f"id {key!r}: kept values"
        if row[-1] is None:
            assert theirs[-1] is None, f"id {key!r}: null vector"
        else:
            np.testing.assert_array_equal(theirs[-1], row[-1], err_msg=f"id {key!r}")
