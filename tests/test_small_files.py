"""Many small files: packed whole into shards of about shard_rows, rows packed into full requests,
commits journaled (linear), exactly-once across kill -9, failures, retries and verify."""

from __future__ import annotations

import json
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.output.layout import COMMITS as JOURNAL
from batchembed.output.layout import MANIFEST
from tests.conftest import assert_vectors, cli_env, job_for, kill_mid_run, make_texts, read_output, run_cli, run_here
from tests.opens import OpenCounter
from tests.test_csv_inputs import messy_texts, write_csv


def _parquet_files(directory, files: int, rows: int, texts: list[str]):
    directory.mkdir()
    for f in range(files):
        ids = list(range(f * rows, (f + 1) * rows))
        pq.write_table(
            pa.table({"id": pa.array(ids, pa.int64()), "text": [texts[i] for i in ids]}),
            directory / f"f{f:03d}.parquet",
        )
    return directory


def _manifest(out):
    return json.loads((out / MANIFEST).read_text())


def test_small_files_share_shards_and_full_requests(tmp_path, fake):
    files, rows = 60, 7
    texts = make_texts(files * rows, seed=11)
    src = _parquet_files(tmp_path / "in", files, rows, texts)
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 32}, output={"shard_rows": 100})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    shards = sorted(out.glob("part-*.parquet"))
    # 14 whole files (98 rows) per shard, not 60 shards of 7 rows
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [98, 98, 98, 98, 28]
    table = read_output(out)
    assert table.column("id").to_pylist() == list(range(files * rows))
    assert_vectors(table, dict(enumerate(texts)), 16)
    sizes = sorted(len(r.inputs) for r in fake.requests)
    assert len(fake.requests) <= 20 and sizes[len(sizes) // 2] == 32, sizes  # rows of many files per request
    assert not (out / JOURNAL).exists()  # folded into the manifest at the end
    doc = _manifest(out)
    assert [s["kind"] for s in doc["shards"]] == ["files"] * 5
    assert doc["shards"][0]["files"][:2] == [["f000.parquet", 7], ["f001.parquet", 7]]
    verify = run_here(fake, "verify", str(job))
    assert verify.returncode == 0, verify.stdout
    status = json.loads(run_here(fake, "status", str(job), "--json").stdout)
    assert status["shards_done"] == status["shards_total"] == 5 and status["rows_done"] == files * rows


def test_small_and_big_files_and_other_schemas_keep_their_order(tmp_path, fake):
    texts = make_texts(400, seed=5)
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(pa.table({"id": [str(i) for i in range(0, 10)], "text": texts[0:10]}), data / "a.parquet")
    pq.write_table(pa.table({"id": [str(i) for i in range(10, 20)], "text": texts[10:20]}), data / "b.parquet")
    write_csv(data / "c.csv", [(i, texts[i]) for i in range(20, 30)])  # strings too, but from a CSV
    pq.write_table(pa.table({"id": [str(i) for i in range(30, 330)], "text": texts[30:330]}), data / "d.parquet")
    pq.write_table(pa.table({"id": [str(i) for i in range(330, 400)], "text": texts[330:400]}), data / "e.parquet")
    job = job_for(tmp_path, fake, data, output={"shard_rows": 100})

    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    doc = _manifest(out)
    assert [(s["kind"], s["rows"]) for s in doc["shards"]] == [
        ("files", 30),  # a, b and c: same columns, same types
        ("range", 100),
        ("range", 100),
        ("range", 100),
        ("files", 70),
    ]
    assert read_output(out).column("id").to_pylist() == [str(i) for i in range(400)]
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_sigkill_with_many_small_csv_files_is_exactly_once(tmp_path, srv):
    files, rows = 120, 5
    texts = messy_texts(files * rows)
    data = tmp_path / "in"
    data.mkdir()
    for f in range(files):
        write_csv(data / f"f{f:03d}.csv", [(i, texts[i]) for i in range(f * rows, (f + 1) * rows)], blank_every=2)
    srv.latency = 0.01
    job = job_for(tmp_path, srv, data, limits={"batch_inputs": 10, "concurrency": 2}, output={"shard_rows": 50})
    kill_mid_run(srv, job, 25)
    out = tmp_path / "out"
    assert (out / JOURNAL).exists()  # commits so far are journal lines

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "already committed" in result.stderr
    table = read_output(out)
    assert table.column("id").to_pylist() == [str(i) for i in range(files * rows)]
    assert_vectors(table, {str(i): t for i, t in enumerate(texts)}, 16)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_torn_journal_line_is_not_a_commit(tmp_path, srv):
    files, rows = 30, 10
    texts = make_texts(files * rows, seed=2)
    src = _parquet_files(tmp_path / "in", files, rows, texts)
    job = job_for(tmp_path, srv, src, output={"shard_rows": 100})
    crashed = run_cli("run", str(job), "--quiet", env=cli_env(BATCHEMBED_FAILPOINT="journal-torn"))
    assert crashed.returncode == -signal.SIGKILL
    out = tmp_path / "out"
    assert not (out / JOURNAL).read_bytes().endswith(b"\n")  # died half way through the first line

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert read_output(out).column("id").to_pylist() == list(range(files * rows))
    assert run_here(None, "verify", str(job)).returncode == 0


def test_failed_rows_of_packed_files_are_retried_once(tmp_path, fake):
    files, rows = 12, 5
    texts = make_texts(files * rows, seed=9)
    src = _parquet_files(tmp_path / "in", files, rows, texts)
    fake.poison = {texts[23]}  # file 4, row 3
    job = job_for(tmp_path, fake, src, input={"id": None}, output={"shard_rows": 100})

    first = run_here(fake, "run", str(job), "--quiet")
    assert first.returncode == 3, first.stderr
    out = tmp_path / "out"
    failed = pq.read_table(out / "_failed.parquet").to_pylist()
    assert [(f["id"], f["file"], f["row"]) for f in failed] == [("f004.parquet:3", "f004.parquet", 3)]
    ids = read_output(out).column("id").to_pylist()
    assert ids[:6] == [
        "f000.parquet:0",
        "f000.parquet:1",
        "f000.parquet:2",
        "f000.parquet:3",
        "f000.parquet:4",
        "f001.parquet:0",
    ]
    assert "f004.parquet:3" not in ids and len(ids) == files * rows - 1

    fake.poison = set()
    again = run_here(fake, "run", str(job), "--quiet")
    assert again.returncode == 0, again.stderr
    assert sorted(read_output(out).column("id").to_pylist()) == sorted(
        f"f{f:03d}.parquet:{r}" for f in range(files) for r in range(rows)
    )
    verify = run_here(fake, "verify", str(job))
    assert verify.returncode == 0, verify.stdout


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_each_small_file_is_opened_once_per_run(tmp_path, fake, fmt):
    # before: each file was opened 4 times (row count or header, column checks, id check, reading)
    files, rows = 30, 9
    texts = make_texts(files * rows, seed=2)
    if fmt == "parquet":
        src = _parquet_files(tmp_path / "in", files, rows, texts)
    else:
        src = tmp_path / "in"
        src.mkdir()
        for f in range(files):
            write_csv(src / f"g{f:03d}.csv", [(i, texts[i]) for i in range(f * rows, (f + 1) * rows)])
    job = job_for(tmp_path, fake, src, output={"shard_rows": 100})

    with OpenCounter(src) as opens:
        result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    counts = opens.counts()
    assert set(counts) == {p.name for p in src.iterdir()}
    assert set(counts.values()) == {1}, counts
    table = read_output(tmp_path / "out")
    assert [int(i) for i in table.column("id").to_pylist()] == list(range(len(texts)))
    assert_vectors(table.set_column(0, "id", pa.array(range(len(texts)))), dict(enumerate(texts)), 16)
    assert run_here(fake, "verify", str(job)).returncode == 0
