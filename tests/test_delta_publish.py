"""The output as a Delta Lake table: publishing real shards of a real run, and the README's read recipes.

Shards come from a real run (``run_here`` with the in-process fake provider) or are written by the
same ``ShardWriter`` a run uses; the table is read back by delta-rs, polars and DuckDB's delta
extension, on local disk and on a real S3-compatible server (moto).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchembed.errors import ConfigError, OutputError, register_secret
from batchembed.fs.location import StorageOptions, locate
from batchembed.output.publish import (
    DIMENSION_KEY,
    PublishRefused,
    TableFile,
    check_agrees,
    delta_schema,
    delta_storage_options,
    publish,
    read_table_file,
    table_files,
)
from batchembed.output.publish import delta as delta_module
from batchembed.output.shard_writer import ShardWriter
from tests.conftest import ROOT, job_for, make_texts, read_output, run_here, write_parquet
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

DIM = 16
ROWS = 500


def _run(tmp_path: Path, fake) -> Path:
    """A real embed run of ROWS rows into ``tmp_path/out`` (three shards of up to 200 rows), its own table
    taken away and its shards named by their unit alone, so these tests drive the publisher themselves."""
    source = write_parquet(tmp_path / "in.parquet", make_texts(ROWS))
    result = run_here(fake, "run", str(job_for(tmp_path, fake, source)), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    shutil.rmtree(out / "_delta_log")
    for shard in out.glob("part-*.parquet"):
        shard.rename(out / (shard.name.rsplit("-", 1)[0] + ".parquet"))
    return out


def _entries(out: Path) -> list[TableFile]:
    """The output's shards as the publisher takes them (size, rows, footer statistics)."""
    where = locate(str(out))
    return [read_table_file(where, p.name) for p in sorted(out.glob("part-*.parquet"))]


def _rewrite(out: Path, name: str, new_name: str) -> TableFile:
    """A replacement of shard ``name`` under ``new_name``: same rows, every vector negated."""
    table = pq.read_table(out / name)
    flat = table.column("embedding").combine_chunks().values.to_numpy().reshape(-1, DIM)
    negated = pa.FixedSizeListArray.from_arrays(pa.array(-flat.reshape(-1), pa.float32()), DIM)
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", negated)
    writer = ShardWriter(out, new_name, pq.read_schema(out / name))
    writer.write(table)
    written = writer.commit()
    return TableFile(written.name, written.size, written.rows)


def _vectors_by_id(table: pa.Table) -> dict[int, list[float]]:
    return dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True))


def _log_versions(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "_delta_log").glob("*.json"))


# --------------------------------------------------------------------------- publishing


def test_first_publish_makes_the_runs_shards_a_delta_table_with_the_vector_dimension(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    assert publish(str(out), None, files, tag=1, metadata={"model": "fake", "rows": ROWS}) == 0

    dt = DeltaTable(str(out))
    table = dt.to_pyarrow_table()
    glob = read_output(out)
    assert table.num_rows == ROWS
    assert _vectors_by_id(table) == _vectors_by_id(glob)
    vector = dt.schema().to_arrow().field("embedding")  # Delta has no fixed size: array<float> + the dimension
    (field,) = [f for f in dt.schema().fields if f.name == "embedding"]
    assert dict(field.metadata) == {DIMENSION_KEY: str(DIM)}
    assert "embedding" in str(vector)
    assert dt.transaction_version("batchembed") == 1
    assert dt.history()[0]["batchembed"] == {"model": "fake", "rows": ROWS}
    assert (out / "_delta_log").is_dir() and (out / "_manifest.json").is_file()  # side by side at the root


def test_statistics_from_the_footers_are_recorded_per_file(tmp_path, fake):
    out = _run(tmp_path, fake)
    publish(str(out), None, _entries(out), tag=1)
    adds = pa.table(DeltaTable(str(out)).get_add_actions(flatten=True)).sort_by("path")
    assert adds.column("num_records").to_pylist() == [200, 200, 100]
    assert adds.column("min.id").to_pylist() == [0, 200, 400]
    assert adds.column("max.id").to_pylist() == [199, 399, 499]
    assert "min.text" not in adds.column_names  # whole texts are not copied into the log


def test_a_replace_commit_shows_the_new_shard_only_and_time_travel_the_old(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    before = _vectors_by_id(DeltaTable(str(out)).to_pyarrow_table())
    replacement = _rewrite(out, "part-00000.parquet", "part-00000-0000000b.parquet")

    assert publish(str(out), None, [replacement, *files[1:]], tag=2) == 1

    after = DeltaTable(str(out)).to_pyarrow_table()
    assert after.num_rows == ROWS and len(set(after.column("id").to_pylist())) == ROWS  # no row twice
    vectors = _vectors_by_id(after)
    for row_id in range(ROWS):
        expected = [-v for v in before[row_id]] if row_id < 200 else before[row_id]
        assert vectors[row_id] == pytest.approx(expected)
    assert _vectors_by_id(DeltaTable(str(out), version=0).to_pyarrow_table()) == before
    log = [json.loads(line) for line in (out / "_delta_log" / "00000000000000000001.json").read_text().splitlines()]
    assert [a["remove"]["path"] for a in log if "remove" in a] == ["part-00000.parquet"]
    assert [a["add"]["path"] for a in log if "add" in a] == ["part-00000-0000000b.parquet"]


def test_the_same_publish_again_is_a_no_op(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    publish(str(out), None, files[:2], tag=2)
    versions = _log_versions(out)

    assert publish(str(out), None, files[:2], tag=2) == 1  # a rerun after a crash that followed the commit
    assert publish(str(out), None, files[:2], tag=3) == 1  # nothing changed: no new version either
    assert _log_versions(out) == versions


def test_files_written_but_not_published_stay_invisible(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    seen = DeltaTable(str(out)).to_pyarrow_table()
    # a refresh wrote its replacement and died before publishing
    replacement = _rewrite(out, "part-00001.parquet", "part-00001-0000000b.parquet")

    again = DeltaTable(str(out)).to_pyarrow_table()
    assert DeltaTable(str(out)).version() == 0
    assert _vectors_by_id(again) == _vectors_by_id(seen)
    assert check_agrees(str(out), None, [files[0], replacement, files[2]]) == [
        "part-00001-0000000b.parquet is in the output but not in the Delta table (version 0)",
        "part-00001.parquet is in the Delta table (version 0) but not in the output",
    ]
    # the rerun publishes: readers move to the new table at once
    assert publish(str(out), None, [files[0], replacement, files[2]], tag=2) == 1
    assert check_agrees(str(out), None, [files[0], replacement, files[2]]) == []


def test_a_stale_publish_is_refused_and_changes_nothing(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=5)
    with pytest.raises(PublishRefused, match=r"newer run \(publish 5, ours is 3\)"):
        publish(str(out), None, files[:1], tag=3)
    assert table_files(str(out)) == {f.name: f.size for f in files}
    assert DeltaTable(str(out)).version() == 0


@pytest.mark.parametrize(("their_tag", "outcome"), [(2, "ours"), (9, "refused")])
def test_a_writer_committing_between_our_read_and_our_commit_makes_us_decide_again(
    tmp_path, fake, monkeypatch, their_tag, outcome
):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    stale = DeltaTable(str(out))  # the snapshot our publish will decide on
    publish(str(out), None, files[1:], tag=their_tag)  # the racing writer lands first
    opened = []
    real_open = delta_module._open

    def open_stale_first(uri, options, version=None):
        opened.append(uri)
        return stale if len(opened) == 1 else real_open(uri, options, version)

    monkeypatch.setattr(delta_module, "_open", open_stale_first)
    ours = [*files[:2]]
    if outcome == "refused":
        with pytest.raises(PublishRefused):
            publish(str(out), None, ours, tag=3)
    else:
        assert publish(str(out), None, ours, tag=3) == 2
    assert len(opened) == 2  # our commit from the stale snapshot failed, and we decided again
    assert table_files(str(out)) == {f.name: f.size for f in (files[1:] if outcome == "refused" else ours)}


def test_a_writer_creating_the_table_first_makes_us_decide_again(tmp_path, fake, monkeypatch):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)  # the other writer's create lands first
    opened = []
    real_open = delta_module._open

    def no_table_at_first(uri, options, version=None):
        opened.append(uri)
        return None if len(opened) == 1 else real_open(uri, options, version)

    monkeypatch.setattr(delta_module, "_open", no_table_at_first)
    assert publish(str(out), None, files, tag=1) == 0  # our create failed: read again, the same files: no-op
    assert len(opened) == 3  # the first read, the check after the failed create, the second decision
    assert _log_versions(out) == ["00000000000000000000.json"]


def test_a_file_replaced_under_its_own_name_is_refused(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    grown = TableFile(files[0].name, files[0].size + 1, files[0].rows)
    with pytest.raises(OutputError, match="cannot be replaced under its own name"):
        publish(str(out), None, [grown, *files[1:]], tag=2)
    assert check_agrees(str(out), None, [grown, *files[1:]]) == [
        f"part-00000.parquet: {files[0].size} bytes in the Delta table (version 0), {files[0].size + 1} in the output"
    ]


def test_new_files_of_another_schema_are_refused(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    pq.write_table(pa.table({"id": [1], "other": ["x"]}), out / "part-00009.parquet")
    stranger = read_table_file(locate(str(out)), "part-00009.parquet")
    with pytest.raises(OutputError, match="schema differs"):
        publish(str(out), None, [*files, stranger], tag=2)
    assert DeltaTable(str(out)).version() == 0


def test_no_table_and_the_agreement_check(tmp_path, fake):
    out = _run(tmp_path, fake)
    files = _entries(out)
    assert table_files(str(out)) is None
    assert check_agrees(str(out), None, []) == []
    assert check_agrees(str(out), None, files) == [
        f"no Delta table at {out} (no _delta_log/), but the output holds 3 files"
    ]
    with pytest.raises(ValueError, match="lists no file"):
        publish(str(out), None, [], tag=1)
    assert publish(str(out), None, [], tag=1, schema=pq.read_schema(out / files[0].name)) == 0
    assert DeltaTable(str(out)).to_pyarrow_table().num_rows == 0


def test_commit_facts_never_carry_a_secret(tmp_path, fake):
    out = _run(tmp_path, fake)
    register_secret("sk-live-0123456789abcdef")
    publish(str(out), None, _entries(out), tag=1, metadata={"base_url": "https://x/?key=sk-live-0123456789abcdef"})
    log = (out / "_delta_log" / "00000000000000000000.json").read_text()
    assert "sk-live-0123456789abcdef" not in log
    assert DeltaTable(str(out)).history()[0]["batchembed"] == {"base_url": "https://x/?key=***"}


def test_columns_delta_cannot_hold_are_named_before_anything_is_written():
    schema = pa.schema([("id", pa.int64()), ("seen_at", pa.timestamp("ns")), ("took", pa.duration("s"))])
    with pytest.raises(OutputError, match=r"column seen_at: timestamp\[ns\].*; column took: duration\[s\]"):
        delta_schema(schema)


# --------------------------------------------------------------------------- storage options


def test_storage_options_carry_settings_but_never_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    s3 = locate("s3://bkt/out", StorageOptions(endpoint="http://127.0.0.1:9000", region="eu-west-1"))
    assert delta_storage_options(s3) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "eu-west-1",
    }
    assert delta_storage_options(locate("s3://bkt/out", StorageOptions(anonymous=True))) == {
        "AWS_SKIP_SIGNATURE": "true"
    }
    azure = locate("abfs://cont@acct.dfs.core.windows.net/out", StorageOptions(endpoint="http://127.0.0.1:10000/acct"))
    assert delta_storage_options(azure) == {
        "AZURE_STORAGE_ACCOUNT_NAME": "acct",
        "AZURE_STORAGE_ENDPOINT": "http://127.0.0.1:10000/acct",
        "AZURE_ALLOW_HTTP": "true",
    }
    assert delta_storage_options(locate("/tmp/out")) == {}
    with pytest.raises(ConfigError, match=r"storage\.endpoint"):
        delta_storage_options(locate("gs://bkt/out", StorageOptions(endpoint="http://127.0.0.1:4443")))


# --------------------------------------------------------------------------- the README's recipes


def _readme_recipes() -> list[str]:
    """The Python blocks of the README section "Reading the output as a Delta table", in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reading the output as a Delta table", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_recipes_read_the_current_table_and_an_earlier_version(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # DuckDB installs the extension under ~/.duckdb
    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    first = read_output(out)
    now = [*files[:2], _rewrite(out, files[2].name, "part-00002-0000000b.parquet")]
    publish(str(out), None, now, tag=2)  # the replaced shard is kept: time travel to version 0 reads it
    current = pa.concat_tables(pq.read_table(out / f.name) for f in now)

    recipes = _readme_recipes()
    assert len(recipes) >= 4
    scope: dict = {}
    where = tmp_path / "workspace"
    (where / "out").mkdir(parents=True)
    (where / "out" / "example").symlink_to(out)  # the recipes read "out/example", the demo's output
    with contextlib.chdir(where):
        for code in recipes:
            exec(code, scope)

    def same(table) -> None:
        table = pa.table(table).sort_by("id")
        assert table.column("id").to_pylist() == list(range(ROWS))
        expected = current.sort_by("id").column("embedding").to_pylist()
        assert np.allclose(np.array(table.column("embedding").to_pylist()), np.array(expected))

    same(scope["table"])
    same(scope["df"].to_arrow())
    same(scope["lazy"].collect().to_arrow())
    assert str(scope["lazy"].collect_schema()["embedding"]) == f"Array(Float32, shape=({DIM},))"
    same(scope["rows"])
    assert pa.table(scope["rows"]).schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    old = pa.table(scope["old"]).sort_by("id")
    assert old.column("embedding").to_pylist() == first.sort_by("id").column("embedding").to_pylist()
    assert scope["history"][0]["userMetadata"] == "batchembed publish 2"


def test_native_polars_read_delta_fails_on_the_vector_column_as_the_readme_says(tmp_path, fake):
    import polars as pl

    out = _run(tmp_path, fake)
    publish(str(out), None, _entries(out), tag=1)
    with pytest.raises(pl.exceptions.SchemaError, match="Array"):
        pl.read_delta(str(out))
    assert "use_pyarrow=True" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- S3 (moto)


def test_publish_replace_and_read_on_s3(tmp_path, fake, s3, monkeypatch):
    out = _run(tmp_path, fake)
    files = _entries(out)
    bucket = s3.new_bucket()
    for f in files:
        s3.put(bucket, f"out/{f.name}", (out / f.name).read_bytes())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # credentials only in the environment
        monkeypatch.setenv(name, s3.env()[name])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    where = locate(f"s3://{bucket}/out", StorageOptions(endpoint=s3.url, region="us-east-1"))
    options = delta_storage_options(where)
    assert ACCESS_KEY_ID not in str(options) and SECRET_ACCESS_KEY not in str(options)

    assert publish(where, options, files, tag=1, metadata={"job": "s3"}) == 0
    assert publish(where, options, files, tag=1) == 0  # no-op
    replacement = _rewrite(out, files[0].name, "part-00000-0000000b.parquet")
    s3.put(bucket, f"out/{replacement.name}", (out / replacement.name).read_bytes())
    assert publish(where, options, [replacement, *files[1:]], tag=2) == 1

    assert sorted(k for k in s3.keys(bucket, "out/_delta_log/") if k.endswith(".json")) == [
        "out/_delta_log/00000000000000000000.json",
        "out/_delta_log/00000000000000000001.json",
    ]
    table = DeltaTable(f"s3://{bucket}/out", storage_options=options).to_pyarrow_table()
    assert table.num_rows == ROWS and pc.count_distinct(table.column("id")).as_py() == ROWS
    assert check_agrees(where, options, [replacement, *files[1:]]) == []
    assert table_files(where, options) == {f.name: f.size for f in [replacement, *files[1:]]}
    with pytest.raises(PublishRefused):
        publish(where, options, files, tag=1)


def test_an_unreachable_bucket_is_a_clear_error_without_credentials(tmp_path, s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    where = locate("s3://no-such-bucket-here/out", StorageOptions(endpoint=s3.url, region="us-east-1"))
    with pytest.raises(OutputError) as caught:
        publish(where, None, [TableFile("part-00000.parquet", 10, 1)], tag=1, schema=pa.schema([("id", pa.int64())]))
    assert "s3://no-such-bucket-here/out" in str(caught.value)
    assert SECRET_ACCESS_KEY not in str(caught.value) and ACCESS_KEY_ID not in str(caught.value)


def test_copied_output_is_still_a_table(tmp_path, fake):
    """Add paths are relative: an output moved or copied elsewhere reads the same."""
    out = _run(tmp_path, fake)
    publish(str(out), None, _entries(out), tag=1)
    moved = shutil.copytree(out, tmp_path / "moved")
    assert DeltaTable(str(moved)).to_pyarrow_table().num_rows == ROWS


def test_readers_follow_the_log_across_checkpoints(tmp_path, fake, monkeypatch):
    """A checkpoint every 10 commits (a load then replays few JSON files); every reader still sees the last one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    import duckdb
    from duckdb_extensions import import_extension

    out = _run(tmp_path, fake)
    files = _entries(out)
    publish(str(out), None, files, tag=1)
    spare = _rewrite(out, files[0].name, "part-00000-0000000b.parquet")
    for tag in range(2, 15):  # 13 commits swapping shard 0 for its negated twin and back; the last names the twin
        publish(str(out), None, [spare if tag % 2 == 0 else files[0], *files[1:]], tag=tag)
    assert list((out / "_delta_log").glob("*.checkpoint.parquet"))

    dt = DeltaTable(str(out))
    assert dt.version() == 13 and dt.transaction_version("batchembed") == 14
    assert table_files(str(out)) == {f.name: f.size for f in [spare, *files[1:]]}
    negated = [-v for v in pq.read_table(out / files[0].name).column("embedding").to_pylist()[0]]
    con = duckdb.connect()
    import_extension("delta", con=con)
    (first,) = con.sql(f"SELECT embedding FROM delta_scan('{out}') WHERE id = 0").fetchall()
    assert first[0] == pytest.approx(negated)
    assert _vectors_by_id(dt.to_pyarrow_table())[0] == pytest.approx(negated)
    assert con.sql(f"SELECT count(*) FROM delta_scan('{out}')").fetchone()[0] == ROWS


# --------------------------------------------------------------------------- Azure (Azurite)


def test_publish_replace_and_read_on_azure(tmp_path, fake, azurite, monkeypatch):
    out = _run(tmp_path, fake)
    files = _entries(out)
    replacement = _rewrite(out, files[1].name, "part-00001-0000000b.parquet")
    container = azurite.new_container()
    for f in [*files, replacement]:
        with azurite.fs.open_output_stream(f"{container}/out/{f.name}") as sink:
            sink.write((out / f.name).read_bytes())
    for name, value in azurite.env().items():  # the account key only in the environment
        monkeypatch.setenv(name, value)
    where = locate(f"az://{container}/out", StorageOptions(endpoint=azurite.endpoint))
    options = delta_storage_options(where)
    assert azurite.env()["AZURE_STORAGE_ACCOUNT_KEY"] not in str(options)

    assert publish(where, options, files, tag=1) == 0
    assert publish(where, options, [files[0], replacement, files[2]], tag=2) == 1
    table = DeltaTable(f"az://{container}/out", storage_options=options).to_pyarrow_table()
    assert sorted(table.column("id").to_pylist()) == list(range(ROWS))
    assert table_files(where, options) == {f.name: f.size for f in [files[0], replacement, files[2]]}


def test_a_run_opens_its_delta_table_once_per_publish(tmp_path, fake, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    write_parquet(data / "day0.parquet", make_texts(300))
    job = job_for(tmp_path, fake, data, input={"path": str(data / "*.parquet"), "id": None})
    opened = []
    real_open = delta_module._open

    def counted(uri, options, version=None):
        opened.append(uri)
        return real_open(uri, options, version)

    monkeypatch.setattr(delta_module, "_open", counted)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert len(opened) == 1  # the first publish: one look (no table yet), then the create
    write_parquet(data / "day1.parquet", make_texts(100, seed=5))
    opened.clear()
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert len(opened) == 1  # the refresh's publish reads the table once: its files and its commit
    assert DeltaTable(str(tmp_path / "out")).version() == 1
