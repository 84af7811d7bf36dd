"""``input.keep`` is not the job: adding or removing a kept column rewrites the shards from the vectors the
output already holds (no request, not even the canary), and the Delta table takes the new columns; a
setting that changes a vector is still another job."""

from __future__ import annotations

import json
import re
import signal

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from tests.conftest import assert_vectors, cli_env, job_for, make_texts, read_output, run_cli, run_here

TEXTS = make_texts(600, seed=6)


def _data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table(
        {
            "id": [str(i) for i in range(600)],  # text ids, as the CSV's (mixed id types are issue 27's item 5)
            "text": TEXTS,
            "title": [f"title {i}" for i in range(600)],
            "year": [str(1990 + i % 30) for i in range(600)],  # text, as the CSV beside it holds it
        }
    )
    pq.write_table(table.slice(0, 400), data / "a.parquet", row_group_size=100)
    with open(data / "b.csv", "w") as fh:  # a CSV beside it: its kept columns are text
        fh.write("id,text,title,year\n")
        fh.writelines(f'{i},"{TEXTS[i]}",title {i},{1990 + i % 30}\n' for i in range(400, 600))
    return data


def _job(tmp_path, fake, data, keep):
    return job_for(
        tmp_path,
        fake,
        data,
        input={"path": str(data), "text": "text", "id": "id", "keep": keep},
        output={"shard_rows": 150},
    )


def _check(out, keep: list[str]) -> None:
    for table in (read_output(out), DeltaTable(str(out)).to_pyarrow_table()):
        assert table.column_names == ["id", *keep, "embedding", "_text_key"]
        ids = [int(i) for i in table.column("id").to_pylist()]
        assert sorted(ids) == list(range(600))
        if "title" in keep:
            assert table.column("title").to_pylist() == [f"title {i}" for i in ids]
        if "year" in keep:
            assert [int(y) for y in table.column("year").to_pylist()] == [1990 + i % 30 for i in ids]
        assert_vectors(table.set_column(0, "id", pa.array(ids)), dict(enumerate(TEXTS)), 16)


def test_adding_and_removing_kept_columns_buys_nothing(tmp_path, fake):
    data = _data(tmp_path)
    out = tmp_path / "out"
    assert run_here(fake, "run", str(_job(tmp_path, fake, data, ["title"])), "--quiet").returncode == 0
    _check(out, ["title"])

    for keep in (["title", "year"], ["year"], []):
        job = _job(tmp_path, fake, data, keep)
        fake.reset_records()
        plan = run_here(None, "plan", str(job))
        assert plan.returncode == 0, plan.stderr
        assert "kept columns     changed (input.keep)" in plan.stdout
        assert re.search(r"tokens to send\s+0 ", plan.stdout), plan.stdout
        status = run_here(None, "status", str(job))
        assert "another job" not in status.stdout and "kept columns (input.keep) changed" in status.stdout

        result = run_here(fake, "run", str(job), "--quiet")

        assert result.returncode == 0, result.stderr
        assert not fake.requests and not fake.canary_requests(), "no request at all"
        _check(out, keep)
        assert json.loads((out / "_manifest.json").read_text())["fingerprint"]["input.keep"] == keep
        assert run_here(None, "verify", str(job)).returncode == 0
        again = run_here(fake, "run", str(job), "--quiet")
        assert again.returncode == 0 and "up to date" in again.stderr and not fake.canary_requests()


def test_a_kept_column_missing_from_the_input_is_refused_before_anything_changes(tmp_path, fake):
    data = _data(tmp_path)
    assert run_here(fake, "run", str(_job(tmp_path, fake, data, ["title"])), "--quiet").returncode == 0
    out = tmp_path / "out"
    before = json.loads((out / "_manifest.json").read_text())

    refused = run_here(fake, "run", str(_job(tmp_path, fake, data, ["titel"])), "--quiet")

    assert refused.returncode == 1 and "no column 'titel'" in refused.stderr
    assert json.loads((out / "_manifest.json").read_text())["shards"] == before["shards"]
    _check(out, ["title"])


def test_a_setting_that_changes_vectors_is_still_another_job(tmp_path, fake):
    data = _data(tmp_path)
    assert run_here(fake, "run", str(_job(tmp_path, fake, data, [])), "--quiet").returncode == 0
    job = _job(tmp_path, fake, data, ["title"])
    refused = run_here(fake, "run", str(job), "--quiet", "--set", "input.prefix=query: ")
    assert refused.returncode == 1
    assert "input.prefix" in refused.stderr and "input.keep" not in refused.stderr


def test_sigkill_while_kept_columns_are_rewritten_then_the_same_command_finishes_it(tmp_path, fake):
    data = _data(tmp_path)
    assert run_here(fake, "run", str(_job(tmp_path, fake, data, [])), "--quiet").returncode == 0
    job = _job(tmp_path, fake, data, ["title", "year"])
    crashed = run_cli("run", str(job), "--quiet", env=cli_env(BATCHEMBED_FAILPOINT="shard-before-manifest"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert not fake.requests and not fake.canary_requests()
    _check(tmp_path / "out", ["title", "year"])
    assert run_here(None, "verify", str(job)).returncode == 0
