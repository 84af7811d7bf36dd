"""Sinks through the real CLI: a Postgres/pgvector table (a real PostgreSQL 16 + pgvector started by the suite)
and a LanceDB table kept equal to the output's Delta table through first runs and refresh days, a store
that is down for a run, a sink added to an existing output, a table of another shape, and a DSN secret."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import cli_env, job_for, make_texts, run_here
from tests.sinkcheck import add_sinks, assert_same, lance_rows, postgres_rows, table_rows

pytest.importorskip("psycopg")
pytest.importorskip("lancedb")

COLUMNS = ["id", "title", "embedding"]
_names = itertools.count()


@pytest.fixture
def dsn(postgres):
    return postgres.database(f"sinks{next(_names)}")


def _write_day(data: Path, name: str, rows: dict[int, str]) -> None:
    """Input file ``name``: ids, texts and a title per row (rewritten with a later mtime)."""
    path = data / name
    existed = path.exists()
    ids = sorted(rows, reverse=True)  # another order than the output's, as exports often are
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "text": [rows[i] for i in ids], "title": [f"t{i}" for i in ids]}),
        path,
        row_group_size=64,
    )
    if existed:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _setup(tmp_path, fake, *sinks, history_days=0, **output):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(900, seed=5)
    days = {"a.parquet": dict(enumerate(texts[:250])), "b.parquet": {i: texts[i] for i in range(250, 500)}}
    for name, rows in days.items():
        _write_day(data, name, rows)
    job = job_for(
        tmp_path,
        fake,
        data,
        input={"path": str(data / "*.parquet"), "keep": ["title"]},
        output={"shard_rows": 100, "history_days": history_days, **output},
    )
    return add_sinks(job, *sinks), data, days, texts


def _pg(table="search.doc_vectors", **extra):
    return {"kind": "postgres", "table": table, **extra}


def _lance(tmp_path, table="doc_vectors"):
    return {"kind": "lancedb", "uri": str(tmp_path / "lance"), "table": table}


def _assert_equal(tmp_path, dsn=None, pg_table="search.doc_vectors", lance_table="doc_vectors", lance=True):
    table = table_rows(tmp_path / "out", COLUMNS)
    if dsn:
        assert_same(postgres_rows(dsn, pg_table, COLUMNS), table)
    if lance:
        assert_same(lance_rows(str(tmp_path / "lance"), lance_table, COLUMNS), table)
    return table


def _written(stderr: str, kind: str) -> tuple[int, int]:
    """(rows written, rows deleted) a run said it synced into the ``kind`` sink."""
    found = re.search(rf"sink {kind} table .*?: synced to version \d+: ([\d,]+) rows written, ([\d,]+) deleted", stderr)
    assert found, stderr
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def _verify_ok(job, env) -> None:
    result = run_here(None, "verify", str(job), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("equals the table") == len(re.findall(r"^\[\[sink\]\]", job.read_text(), re.M))


def test_first_run_then_refresh_days_keep_both_sinks_equal_writing_only_what_changed(tmp_path, fake, dsn):
    job, data, days, texts = _setup(tmp_path, fake, _pg(index="hnsw"), _lance(tmp_path))
    env = cli_env(BATCHEMBED_PG_DSN=dsn)

    first = run_here(fake, "run", str(job), "--quiet", env=env)
    assert first.returncode == 0, first.stderr
    assert "sink postgres table search.doc_vectors: loaded at version 0: 500 rows" in first.stderr
    _assert_equal(tmp_path, dsn)
    _verify_ok(job, env)

    # day 2: b edited (10 texts), 20 rows removed, 5 added; a new file c; 30 rows moved from a to c
    b = dict(days["b.parquet"])
    for i in range(250, 260):
        b[i] = f"edited text {i}"
    for i in range(300, 320):
        del b[i]
    for k in range(5):
        b[600 + k] = texts[600 + k]
    a = dict(days["a.parquet"])
    moved = {i: a.pop(i) for i in range(0, 30)}
    _write_day(data, "b.parquet", b)
    _write_day(data, "a.parquet", a)
    _write_day(data, "c.parquet", {**moved, **{700 + k: texts[700 + k] for k in range(7)}})
    second = run_here(fake, "run", str(job), "--quiet", env=env)

    assert second.returncode == 0, second.stderr
    changed = 10 + 5 + 7  # edited, added to b, new in c; the 30 moved rows are not written again
    assert _written(second.stderr, "postgres") == (changed, 20)
    assert _written(second.stderr, "lancedb") == (changed, 20)
    table = _assert_equal(tmp_path, dsn)
    assert len(table) == 250 + 250 - 20 + 5 + 7
    _verify_ok(job, env)

    # day 3: nothing changed: no request, and the sinks stay as they are
    fake.reset_records()
    third = run_here(fake, "run", str(job), "--quiet", env=env)
    assert third.returncode == 0 and fake.received_texts() == []
    _assert_equal(tmp_path, dsn)
    import psycopg

    with psycopg.connect(dsn) as conn:  # the HNSW index was built after the first load and serves a search
        assert conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'doc_vectors'").fetchall()
        query = "SELECT id FROM search.doc_vectors ORDER BY embedding <=> (SELECT embedding FROM search.doc_vectors "
        assert conn.execute(query + "WHERE id = 42) LIMIT 1").fetchone() == (42,)


@pytest.mark.parametrize("dimensions", [16, None])
def test_a_table_of_another_shape_is_refused_before_anything_is_bought(tmp_path, fake, dsn, dimensions):
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE doc_vectors (id bigint PRIMARY KEY, title text, embedding vector(8))")
    job, _, _, _ = _setup(tmp_path, fake, _pg(table="doc_vectors"))
    if dimensions:
        job.write_text(job.read_text().replace("[model]\n", f"[model]\ndimensions = {dimensions}\n"))
    result = run_here(fake, "run", str(job), "--quiet", env=cli_env(BATCHEMBED_PG_DSN=dsn))

    assert result.returncode == 1
    # a job that names its dimensions is refused before any request; one that does not, after the canary
    # (the one tiny request that tells the vectors' size), before any of its texts
    assert fake.requests == [] and len(fake.canary_requests()) == (0 if dimensions else 1)
    assert (
        "postgres table doc_vectors holds vector(8) in 'embedding' where this job's vectors have 16 dimensions: "
        "drop the table" in result.stderr
    )


def test_a_lancedb_table_with_other_ids_is_refused_before_anything_is_bought(tmp_path, fake):
    import lancedb

    db = lancedb.connect(str(tmp_path / "lance"))
    db.create_table(
        "doc_vectors",
        pa.table({"id": ["x"], "title": ["t"], "embedding": pa.array([[0.0] * 16], pa.list_(pa.float32(), 16))}),
    )
    job, _, _, _ = _setup(tmp_path, fake, _lance(tmp_path))
    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 1  # the ids' type is known from the input: not even the canary
    assert fake.requests == [] and fake.canary_requests() == []
    assert "lancedb table doc_vectors has 'id' as string where this job has int64: drop the table" in result.stderr


def test_a_database_down_for_one_run_costs_no_token_and_the_next_run_catches_up(tmp_path, fake, dsn):
    job, data, days, _ = _setup(tmp_path, fake, _pg(), history_days=1)
    env = cli_env(BATCHEMBED_PG_DSN=dsn)
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    b = {i: f"changed {i}" for i in range(250, 270)} | {i: t for i, t in days["b.parquet"].items() if i >= 300}
    _write_day(data, "b.parquet", b)
    down = cli_env(BATCHEMBED_PG_DSN=f"postgresql://postgres:Hunter2Secret@/{dsn.split('/')[-1].split('?')[0]}"
                   "?host=/nonexistent/socket")  # fmt: skip

    result = run_here(fake, "run", str(job), "--quiet", env=down)

    assert result.returncode == 69, result.stderr
    assert "sink behind: postgres table search.doc_vectors: cannot connect" in result.stderr
    assert (tmp_path / "out" / "_SUCCESS").exists()  # the output is complete and published
    status = json.loads(run_here(None, "status", str(job), "--json", env=down).stdout)
    assert status["sinks"][0]["state"] == "unreachable" and status["sinks"][0]["table_version"] == 1
    behind = run_here(None, "status", str(job), env=env).stdout
    assert "postgres table search.doc_vectors: version 0 of the table's 1 (behind" in behind
    assert run_here(None, "verify", str(job), env=env).returncode == 1

    fake.reset_records()
    again = run_here(fake, "run", str(job), "--quiet", env=env)
    assert again.returncode == 0, again.stderr
    assert fake.requests == [] and fake.canary_requests() == []  # caught up without buying anything
    assert _written(again.stderr, "postgres") == (20, 30)  # from the version it held (history kept the files)
    _assert_equal(tmp_path, dsn, lance=False)
    _verify_ok(job, env)


def test_a_sink_behind_files_that_are_gone_is_reloaded_in_full_and_the_run_says_so(tmp_path, fake, dsn, monkeypatch):
    monkeypatch.setattr("batchembed.output.refresh.RETIRE_GRACE", 0)  # replaced files go at the next run
    job, data, days, _ = _setup(tmp_path, fake, _pg())
    env = cli_env(BATCHEMBED_PG_DSN=dsn)
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    _write_day(data, "b.parquet", {i: t for i, t in days["b.parquet"].items() if i % 2})
    down = cli_env(BATCHEMBED_PG_DSN="host=/nonexistent")
    assert run_here(fake, "run", str(job), "--quiet", env=down).returncode == 69
    assert run_here(fake, "run", str(job), "--quiet", env=down).returncode == 69  # sweeps version 0's files

    result = run_here(None, "sync", str(job), env=env)

    assert result.returncode == 0, result.stderr
    assert re.search(r"reloaded in full at version 1 \(the files of version 0 it holds are gone .*\): 375 rows",
                     result.stderr), result.stderr  # fmt: skip
    _assert_equal(tmp_path, dsn, lance=False)
    _verify_ok(job, env)


def test_a_sink_added_to_an_existing_output_is_loaded_by_sync_without_embedding(tmp_path, fake, dsn):
    job, _, _, _ = _setup(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    add_sinks(job, _pg(), _lance(tmp_path))
    env = cli_env(BATCHEMBED_PG_DSN=dsn)
    fake.reset_records()

    only_pg = run_here(None, "sync", str(job), "--sink", "search.doc_vectors", env=env)
    assert only_pg.returncode == 0, only_pg.stderr
    assert "lancedb" not in only_pg.stderr
    both = run_here(None, "sync", str(job), env=env)
    assert both.returncode == 0, both.stderr
    assert "postgres table search.doc_vectors: already at version 0" in both.stderr
    assert fake.requests == []
    _assert_equal(tmp_path, dsn)
    _verify_ok(job, env)
    unknown = run_here(None, "sync", str(job), "--sink", "nope", env=env)
    assert unknown.returncode == 1 and "its sinks: search.doc_vectors, doc_vectors" in unknown.stderr


def test_the_dsn_password_is_never_printed_or_stored(tmp_path, fake, dsn):
    secret = "Sup3rSecretPassw0rd"
    with_password = dsn.replace("postgres@", f"postgres:{secret}@")  # the test server trusts the socket
    job, data, days, _ = _setup(tmp_path, fake, _pg())
    env = cli_env(BATCHEMBED_PG_DSN=with_password)
    outputs = [run_here(fake, "run", str(job), "--quiet", env=env)]
    _write_day(data, "b.parquet", {i: t for i, t in days["b.parquet"].items() if i % 3})
    bad = cli_env(BATCHEMBED_PG_DSN=with_password.replace("host=", "host=/nonexistent"))
    outputs += [run_here(fake, "run", str(job), "--quiet", env=bad)]
    outputs += [run_here(None, cmd, str(job), env=bad) for cmd in ("status", "verify", "sync")]
    outputs += [run_here(None, cmd, str(job), env=env) for cmd in ("sync", "status", "verify")]

    assert [o.returncode for o in outputs] == [0, 69, 0, 1, 69, 0, 0, 0]
    for o in outputs:
        assert secret not in o.stdout + o.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and not path.name.endswith(".parquet"):
            assert secret.encode() not in path.read_bytes(), path
    _assert_equal(tmp_path, dsn, lance=False)


def test_sinks_are_not_part_of_the_job(tmp_path, fake, dsn):
    """Adding a sink to a finished job is not another job: no --restart, nothing bought."""
    job, _, _, _ = _setup(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    add_sinks(job, _pg())
    fake.reset_records()
    result = run_here(fake, "run", str(job), "--quiet", env=cli_env(BATCHEMBED_PG_DSN=dsn))
    assert result.returncode == 0, result.stderr
    assert fake.requests == [] and "nothing to do" in result.stderr
    _assert_equal(tmp_path, dsn, lance=False)


def test_text_ids_generated_or_with_quotes_are_kept_and_deleted_exactly(tmp_path, fake, dsn):
    """Ids that are text: generated ``file:row`` ids (rows that move get new ids), and an id column whose
    values hold quotes and backslashes (LanceDB deletes by a filter naming them)."""
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(300, seed=8)

    def write(keys: list[int]) -> None:
        ids = [f"doc '{k}' \\ \"{k}\"" for k in keys]
        pq.write_table(pa.table({"key": ids, "text": [texts[k] for k in keys], "title": [f"t{k}" for k in keys]}),
                       data / "a.parquet")  # fmt: skip
        st = os.stat(data / "a.parquet")
        os.utime(data / "a.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    write(list(range(300)))
    for name, id_column, table in (("quoted", "key", "quoted"), ("generated", None, "generated")):
        job = job_for(tmp_path, fake, data, input={"path": str(data / "*.parquet"), "id": id_column, "keep": ["title"]},
                      output={"path": str(tmp_path / f"out-{name}"), "shard_rows": 100})  # fmt: skip
        job = job.rename(tmp_path / f"{name}.toml")
        add_sinks(job, _pg(table=table), {"kind": "lancedb", "uri": str(tmp_path / "lance"), "table": table})
        env = cli_env(BATCHEMBED_PG_DSN=dsn)
        assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    write([k for k in range(300) if k % 7])  # 43 rows gone; generated ids of the rest shift
    for name, id_column, table in (("quoted", "key", "quoted"), ("generated", None, "generated")):
        job = tmp_path / f"{name}.toml"
        result = run_here(fake, "run", str(job), "--quiet", env=env)
        assert result.returncode == 0, result.stderr
        cols = [id_column or "id", "title", "embedding"]
        rows = table_rows(tmp_path / f"out-{name}", cols)
        assert len(rows) == 257
        assert_same(postgres_rows(dsn, table, cols), rows)
        assert_same(lance_rows(str(tmp_path / "lance"), table, cols), rows)
        if id_column:
            assert _written(result.stderr, "postgres") == (0, 43)  # only the deletions
        _verify_ok(job, env)
