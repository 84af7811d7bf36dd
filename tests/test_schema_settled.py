"""The output's column types are settled from every input file and the table before anything is bought:
mixed id types meet as text, integers and floats are written wide, a column of nulls takes the others'
type, Delta-incompatible types are converted without loss or refused by ``plan`` and ``run`` alike, and a
drift the table cannot take is refused before buying. Every shard has the table's types; ``verify`` checks it."""

from __future__ import annotations

import datetime
import json

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchembed.fs.location import locate
from batchembed.output.publish import publish, read_table_file
from batchembed.output.shard_writer import ShardWriter
from tests.conftest import job_for, make_texts, run_here

TEXTS = make_texts(40, seed=5)


def _job(tmp_path, fake, data, keep=()):
    return job_for(
        tmp_path,
        fake,
        data,
        input={"path": str(data), "text": "text", "id": "id", "keep": list(keep)},
        output={"shard_rows": 50},
    )


def _types(out) -> dict:
    return {f["name"]: f["type"] for f in json.loads(DeltaTable(str(out)).schema().to_json())["fields"]}


def _files(out) -> list:
    return DeltaTable(str(out)).file_uris()


def _file_types(out) -> list[dict]:
    return [{f.name: str(f.type) for f in pq.read_schema(u)} for u in _files(out)]


def test_parquet_integer_ids_and_csv_text_ids_make_one_text_id_column(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": pa.array(range(10), pa.int64()), "text": TEXTS[:10]}), data / "a.parquet")
    (data / "b.csv").write_text("id,text\n" + "".join(f"{900 + i},{TEXTS[10 + i]}\n" for i in range(10)))
    job = _job(tmp_path, fake, data)

    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    out = tmp_path / "out"
    assert _types(out)["id"] == "string"
    assert {t["id"] for t in _file_types(out)} == {"string"}  # every shard has the table's type
    dt = DeltaTable(str(out))
    assert dt.to_pyarrow_dataset().to_table(filter=pc.field("id") == "900").num_rows == 1
    assert dt.to_pyarrow_dataset().to_table(filter=pc.field("id") == "3").num_rows == 1
    lazy = pl.scan_parquet(_files(out))  # the README's polars recipe
    assert lazy.filter(pl.col("id") == "905").collect().height == 1
    assert run_here(None, "verify", str(job)).returncode == 0


def test_integers_widen_floats_widen_and_a_column_of_nulls_takes_the_others_type(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    first = {
        "id": pa.array(range(10), pa.int32()),
        "text": TEXTS[:10],
        "n": pa.array(range(10), pa.int32()),
        "x": pa.array([0.5] * 10, pa.float32()),
        "note": pa.nulls(10),  # all null in the first file
        "never": pa.nulls(10),  # and in every file
    }
    second = {
        "id": pa.array(range(10, 20), pa.int64()),
        "text": TEXTS[10:20],
        "n": pa.array(range(10), pa.int64()),
        "x": pa.array([1.5] * 10, pa.float64()),
        "note": pa.array(["a"] * 10),
        "never": pa.nulls(10),
    }
    pq.write_table(pa.table(first), data / "a.parquet")
    pq.write_table(pa.table(second), data / "b.parquet")
    job = _job(tmp_path, fake, data, keep=["n", "x", "note", "never"])

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {k: _types(out)[k] for k in ("id", "n", "x", "note", "never")} == {
        "id": "long",
        "n": "long",
        "x": "double",
        "note": "string",
        "never": "string",
    }
    table = DeltaTable(str(out)).to_pyarrow_dataset().to_table(columns=["id", "note"])  # readable: no void column
    assert table.num_rows == 20 and table.column("note").null_count == 10
    assert run_here(None, "verify", str(job)).returncode == 0


def test_nanosecond_timestamps_are_converted_when_nothing_is_lost(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    at = [datetime.datetime(2024, 1, 1, 12, 0, i) for i in range(10)]
    table = pa.table({"id": range(10), "text": TEXTS[:10], "at": pa.array(at, pa.timestamp("ns"))})
    pq.write_table(table, data / "a.parquet", coerce_timestamps=None, version="2.6")
    assert pq.read_schema(data / "a.parquet").field("at").type == pa.timestamp("ns")
    job = _job(tmp_path, fake, data, keep=["at"])

    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    out = tmp_path / "out"
    assert _types(out)["at"] == "timestamp_ntz"
    got = DeltaTable(str(out)).to_pyarrow_dataset().to_table(columns=["at"]).column("at").to_pylist()
    assert sorted(got) == at


def test_a_finer_than_microsecond_timestamp_is_refused_by_plan_and_run_before_any_request(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    ns = pa.array([1_700_000_000_000_000_000 + i * 1000 for i in range(10)], pa.int64())
    ns = pc.add(ns, pa.array([0] * 7 + [1, 0, 0], pa.int64())).cast(pa.timestamp("ns"))  # row 7: +1 ns
    pq.write_table(pa.table({"id": range(10), "text": TEXTS[:10], "at": ns}), data / "a.parquet", version="2.6")
    job = _job(tmp_path, fake, data, keep=["at"])

    plan = run_here(None, "plan", str(job))
    run = run_here(fake, "run", str(job), "--quiet")

    assert plan.returncode == 1 and run.returncode == 1
    for said in (plan.stdout, run.stderr):
        assert "a.parquet: column 'at' is timestamp[ns] and row 7 has a part finer than a microsecond" in said
        assert "timestamp[us]" in said and "input.keep" in said
    assert not fake.requests and not fake.canary_requests()


def test_time_and_uint64_columns_are_refused_before_any_request(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table(
        {
            "id": range(10),
            "text": TEXTS[:10],
            "clock": pa.array([datetime.time(1, i) for i in range(10)], pa.time64("us")),
        }
    )
    pq.write_table(table, data / "a.parquet")
    job = _job(tmp_path, fake, data, keep=["clock"])

    run = run_here(fake, "run", str(job), "--quiet")

    assert run.returncode == 1
    assert "column 'clock' is time64[us], which a Delta table cannot hold" in run.stderr
    assert not fake.requests and not fake.canary_requests()


@pytest.fixture
def day_one(tmp_path, fake):
    """A first run over int64 ids, an int32 kept column, a string kept column and microsecond timestamps."""
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table(
        {
            "id": pa.array(range(20), pa.int64()),
            "text": TEXTS[:20],
            "n": pa.array(range(20), pa.int32()),
            "label": pa.array(["x"] * 20),
            "at": pa.array([datetime.datetime(2024, 1, 1)] * 20, pa.timestamp("us")),
        }
    )
    pq.write_table(table, data / "a.parquet")
    job = _job(tmp_path, fake, data, keep=["n", "label", "at"])
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    fake.reset_records()
    return data, job, tmp_path / "out"


def test_a_drift_the_table_can_take_is_taken_without_loss(day_one, fake):
    data, job, out = day_one
    before = _types(out)
    at = [datetime.datetime(2024, 1, 2, 0, 0, i) for i in range(10)]
    day2 = {
        "id": pa.array(range(100, 110), pa.int64()),
        "text": TEXTS[20:30],
        "n": pa.array(range(10), pa.int64()),  # int32 became int64 upstream
        "label": pa.nulls(10),  # all null today
        "at": pa.array(at, pa.timestamp("ns")),  # [us] became [ns], nothing finer than a microsecond
    }
    pq.write_table(pa.table(day2), data / "b.parquet", version="2.6")

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert _types(out) == before
    assert len({json.dumps(t, sort_keys=True) for t in _file_types(out)}) == 1  # every file the table's types
    assert run_here(None, "verify", str(job)).returncode == 0


def test_a_drift_the_table_cannot_take_is_refused_before_buying(day_one, fake):
    data, job, out = day_one
    (data / "b.csv").write_text("id,text,n,label,at\n" + "".join(f"k{i},{TEXTS[30 + i]},1,y,\n" for i in range(5)))

    plan = run_here(None, "plan", str(job))
    run = run_here(fake, "run", str(job), "--quiet")

    assert plan.returncode == 1 and run.returncode == 1
    for said in (plan.stdout, run.stderr):
        assert "b.csv: column 'id' is string here but int64 in the Delta table" in said
        assert "--restart" in said
    assert not fake.requests and not fake.canary_requests()
    assert json.loads((out / "_manifest.json").read_text())["generation"] == 0  # nothing written either


def test_verify_fails_when_a_file_of_the_table_has_other_types(day_one):
    _data, job, out = day_one
    assert run_here(None, "verify", str(job)).returncode == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    shard = manifest["shards"][0]
    table = pq.read_table(out / shard["name"])
    odd = table.set_column(0, "id", table.column("id").cast(pa.string()))  # as an older batchembed wrote mixed ids
    name = f"{shard['unit']}-0000000f.parquet"
    writer = ShardWriter(out, name, odd.schema)
    writer.write(odd)
    written = writer.commit()
    where = locate(str(out))
    files = [read_table_file(where, s["name"]) for s in [{"name": name}, *manifest["shards"][1:]]]
    publish(where, None, files, tag=2, schema=table.schema)  # the log takes any file (delta-rs checks nothing)
    shard.update(name=name, size=written.size, checksum=written.checksum)
    (out / "_manifest.json").write_text(json.dumps(manifest))

    verify = run_here(None, "verify", str(job))

    assert verify.returncode == 1
    assert f"{name}: column 'id' is string in the file but long in the Delta table" in verify.stdout
