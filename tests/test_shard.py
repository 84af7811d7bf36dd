"""``run --shard I/N``: N processes split one job on one output, each with its own manifest part."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from tests.conftest import (
    assert_vectors,
    cli_env,
    daily_files,
    job_for,
    make_texts,
    most_in_window,
    paced_allowance,
    read_output,
    run_here,
    start_cli,
)


def _inputs(tmp_path, files: int = 3, rows: int = 500):
    return daily_files(tmp_path, files, rows)


def test_three_shards_at_once_make_one_exact_output_within_the_limits(tmp_path, srv):
    src, text_of = _inputs(tmp_path)
    rpm = 600
    srv.rate_limit(rpm=rpm)
    job = job_for(tmp_path, srv, src, limits={"requests_per_minute": rpm, "batch_inputs": 16})

    procs = [start_cli("run", str(job), "--quiet", "--shard", f"{i}/3") for i in range(3)]
    results = [p.communicate(timeout=240) for p in procs]

    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    out = tmp_path / "out"
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    assert (out / "_SUCCESS").exists()
    assert sorted(p.name for p in out.glob("_manifest.*")) == [
        f"_manifest.shard-{i:04d}-of-0003.json" for i in range(3)
    ]
    status = run_here(None, "status", str(job), "--json")
    doc = json.loads(status.stdout)
    assert doc["complete"] and doc["rows_done"] == doc["rows_total"] == 1500
    assert doc["shards_done"] == doc["shards_total"] == 9
    assert run_here(None, "verify", str(job)).returncode == 0
    throttled = sum(1 for r in srv.requests if r.status == 429)
    assert throttled < 0.02 * len(srv.requests), f"{throttled} of {len(srv.requests)} requests were 429"
    # together the three parts keep the job's rate (each alone at the full rate would send three times this)
    assert most_in_window([r.received_at for r in srv.requests], 5.0) <= paced_allowance(rpm, 5.0)


def test_rerunning_one_shard_resumes_only_that_shard_and_the_last_writes_success(tmp_path, fake):
    src, text_of = _inputs(tmp_path, files=2, rows=400)
    job = job_for(tmp_path, fake, src)
    out = tmp_path / "out"

    first = run_here(fake, "run", str(job), "--quiet", "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert not (out / "_SUCCESS").exists()
    mine = {p.name for p in out.glob("part-*")}
    assert {name.rsplit("-", 1)[0] for name in mine} == {f"part-{i:05d}" for i in (0, 2)}
    fake.reset_records()
    again = run_here(fake, "run", str(job), "--quiet", "--shard", "0/2")
    assert again.returncode == 0, again.stderr
    assert fake.requests == []  # part 0 is done: nothing redone, part 1 untouched
    assert {p.name for p in out.glob("part-*")} == mine
    status = json.loads(run_here(fake, "status", str(job), "--json").stdout)
    assert not status["complete"] and status["rows_done"] == 400

    assert not (out / "_delta_log").exists()  # no table until the split is complete
    last = run_here(fake, "run", str(job), "--quiet", "--shard", "1/2")
    assert last.returncode == 0, last.stderr
    assert (out / "_SUCCESS").exists()
    table = read_output(out)
    published = DeltaTable(str(out)).to_pyarrow_table()
    assert sorted(published.column("id").to_pylist()) == sorted(text_of)
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_mixing_sharded_and_unsharded_runs_is_refused(tmp_path, fake):
    src, _ = _inputs(tmp_path, files=1, rows=300)
    job = job_for(tmp_path, fake, src)
    assert run_here(fake, "run", str(job), "--quiet", "--shard", "0/2").returncode == 0

    plain = run_here(fake, "run", str(job), "--quiet")
    assert plain.returncode == 1
    assert "--shard I/2" in plain.stderr and "unsharded run would" in plain.stderr
    other_split = run_here(fake, "run", str(job), "--quiet", "--shard", "0/3")
    assert other_split.returncode == 1 and "split into 2 parts" in other_split.stderr
    restarted = run_here(fake, "run", str(job), "--quiet", "--restart")  # discards the split output whole
    assert restarted.returncode == 0, restarted.stderr
    assert not list((tmp_path / "out").glob("_manifest.shard-*"))
    assert run_here(fake, "verify", str(job)).returncode == 0

    job2 = job_for(tmp_path, fake, src, output={"path": str(tmp_path / "out2")})
    assert run_here(fake, "run", str(job2), "--quiet").returncode == 0
    sharded = run_here(fake, "run", str(job2), "--quiet", "--shard", "1/2")
    assert sharded.returncode == 1 and "unsharded run" in sharded.stderr


def test_bad_shard_argument_is_a_usage_error(tmp_path, fake):
    src, _ = _inputs(tmp_path, files=1, rows=10)
    job = job_for(tmp_path, fake, src)
    for bad in ("3/3", "x", "1/0"):
        result = run_here(fake, "run", str(job), "--shard", bad, env=cli_env())
        assert result.returncode == 2 and "--shard" in result.stderr, result.stderr


def test_split_output_refreshes_part_by_part_and_publishes_once_complete(tmp_path, fake):
    src, text_of = _inputs(tmp_path, files=3, rows=300)
    job = job_for(tmp_path, fake, src, output={"shard_rows": 100})
    out = tmp_path / "out"
    for part in ("0/3", "1/3", "2/3"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 0
    version = DeltaTable(str(out)).version()
    # f1 edited (20 texts) and f3 added
    ids = list(range(300, 600))
    edited = {i: (f"edited {i}" if i < 320 else text_of[i]) for i in ids}
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [edited[i] for i in ids]}), src / "f1.parquet")
    extra = make_texts(150, seed=42)
    pq.write_table(pa.table({"id": pa.array(range(900, 1050), pa.int64()), "text": extra}), src / "f3.parquet")
    want = {**text_of, **edited, **dict(zip(range(900, 1050), extra, strict=True))}
    fake.reset_records()

    for part in ("2/3", "0/3"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 0
        assert DeltaTable(str(out)).version() == version  # readers keep the old table until the split completes
    assert run_here(fake, "run", str(job), "--quiet", "--shard", "1/3").returncode == 0

    assert sorted(fake.received_texts()) == sorted([edited[i] for i in range(300, 320)] + extra)
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(want)
    assert_vectors(table, want, 16)
    published = DeltaTable(str(out))
    assert published.version() == version + 1
    assert sorted(published.to_pyarrow_table().column("id").to_pylist()) == sorted(want)
    assert (out / "_SUCCESS").exists()
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_each_part_reads_only_its_own_units_rows(tmp_path, fake, monkeypatch):
    # two big files of 15 and 7 units: part I of 3 decodes the texts of its own units' row groups only (the
    # id check still scans every id: uniqueness is the whole input's); before, every part read every row
    src = tmp_path / "in"
    src.mkdir()
    text_of = {}
    for f, rows in enumerate([3000, 1300]):
        texts = make_texts(rows, seed=f)
        ids = [f * 10_000 + i for i in range(rows)]
        table = pa.table({"id": pa.array(ids, pa.int64()), "text": texts})
        pq.write_table(table, src / f"f{f}.parquet", row_group_size=100)
        text_of.update(zip(ids, texts, strict=True))
    job = job_for(tmp_path, fake, src)  # shard_rows = 200
    read: dict[str, int] = {}
    iter_batches = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            if "text" in batch.schema.names:
                read["rows"] = read.get("rows", 0) + batch.num_rows
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    units = [200] * 15 + [200] * 6 + [100]  # unit sizes in ordinal order: part I has those I modulo 3
    out = tmp_path / "out"
    for part in range(3):
        read.clear()
        result = run_here(fake, "run", str(job), "--quiet", "--shard", f"{part}/3")
        assert result.returncode == 0, result.stderr
        own = sum(size for ordinal, size in enumerate(units) if ordinal % 3 == part)
        assert read["rows"] == own, (part, read, own)  # units end on row group edges here: nothing more

    assert (out / "_SUCCESS").exists()
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    assert run_here(fake, "verify", str(job)).returncode == 0
