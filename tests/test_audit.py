"""What ``status`` and ``verify`` answer about an output, and the small inputs that must not stop a job:
mixed id types, another job's settings, failure files of a split output, a run holding the output."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchembed.testing import token_count
from tests.conftest import job_for, kill_mid_run, make_texts, run_here, write_parquet


def _run(fake, job, *args):
    result = run_here(fake, "run", str(job), "--quiet", *args)
    assert result.returncode == 0, result.stderr
    return result


# ----------------------------------------------------------------------------------- item 7: id types


def test_verify_compares_ids_by_their_text_form_across_csv_and_parquet(tmp_path, fake):
    texts = make_texts(300, seed=21)
    (tmp_path / "in").mkdir()
    write_parquet(tmp_path / "in" / "a.parquet", texts[:150])  # integer ids 0..149
    csv = pa.table({"id": [f"c{i}" for i in range(150)], "text": texts[150:]})
    pacsv.write_csv(csv, tmp_path / "in" / "b.csv")
    job = job_for(tmp_path, fake, tmp_path / "in", output={"shard_rows": 100})
    _run(fake, job)

    verify = run_here(None, "verify", str(job))

    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Traceback" not in verify.stderr and "OK:" in verify.stdout


def test_verify_treats_string_and_large_string_ids_alike(tmp_path, fake):
    texts = make_texts(200, seed=22)
    (tmp_path / "in").mkdir()
    write_parquet(tmp_path / "in" / "a.parquet", texts[:100], id=pa.array([f"a{i}" for i in range(100)]))
    pl.DataFrame({"id": [f"b{i}" for i in range(100)], "text": texts[100:]}).write_parquet(
        tmp_path / "in" / "b.parquet"
    )
    assert pq.read_schema(tmp_path / "in" / "b.parquet").field("id").type == pa.large_string()
    job = job_for(tmp_path, fake, tmp_path / "in", output={"shard_rows": 100})
    _run(fake, job)

    verify = run_here(None, "verify", str(job))

    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_id_repeated_as_text_and_as_integer_is_refused_by_the_id_check(tmp_path, fake):
    # the same rule as verify: an id is its text form, so CSV "7" and Parquet 7 are one id
    texts = make_texts(20, seed=23)
    (tmp_path / "in").mkdir()
    write_parquet(tmp_path / "in" / "a.parquet", texts[:10])
    pacsv.write_csv(pa.table({"id": ["x", "7"], "text": texts[10:12]}), tmp_path / "in" / "b.csv")
    job = job_for(tmp_path, fake, tmp_path / "in")

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 1
    assert "input.id '7' appears in rows a.parquet:7 and b.csv:1" in result.stderr


# ---------------------------------------------------------------------- item 16: a 0-row Parquet file


def test_a_parquet_file_without_rows_and_with_null_typed_columns_does_not_stop_the_job(tmp_path, fake):
    texts = make_texts(50, seed=24)
    (tmp_path / "in").mkdir()
    write_parquet(tmp_path / "in" / "a.parquet", texts)
    pq.write_table(
        pa.table({"id": pa.array([], pa.null()), "text": pa.array([], pa.null())}), tmp_path / "in" / "b.parquet"
    )
    job = job_for(tmp_path, fake, tmp_path / "in", output={"shard_rows": 20})

    _run(fake, job)

    assert run_here(None, "verify", str(job)).returncode == 0
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] is True and status["rows_done"] == 50 == status["rows_total"]


@pytest.mark.parametrize("kind", [pa.int64(), pa.null()])
def test_a_text_column_of_another_type_in_a_file_with_rows_is_still_refused(tmp_path, fake, kind):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": pa.array([None, None], kind)}), tmp_path / "in" / "a.parquet")
    job = job_for(tmp_path, fake, tmp_path / "in")

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 1 and "text column 'text' holds" in result.stderr


# ------------------------------------------------------------------- item 13: tokens where they were bought


def test_tokens_after_three_kills_and_a_resume_are_those_of_an_uninterrupted_run(tmp_path, srv, fake):
    # What is counted: every answer accepted and kept in the journal, by the run that bought it (a kill
    # loses only the requests in flight: they are bought again by the next run and counted there once).
    n = 2000
    texts = make_texts(n, seed=25)
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=250)
    limits = {"batch_inputs": 10, "concurrency": 2, "max_retries": 6}
    job = job_for(tmp_path, srv, src, limits=limits, output={"shard_rows": 1000})
    for more in (30, 45, 60):
        kill_mid_run(srv, job, len(srv.requests) + more, timeout=120)
    killed = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert killed["tokens_uncommitted"] > 0  # the killed runs' answers, bought and kept, not in a shard yet
    _run(srv, job)

    (tmp_path / "plain").mkdir()
    plain = job_for(tmp_path / "plain", fake, src, limits=limits, output={"shard_rows": 1000})
    _run(fake, plain)

    resumed = json.loads(run_here(None, "status", str(job), "--json").stdout)
    uninterrupted = json.loads(run_here(None, "status", str(plain), "--json").stdout)
    assert resumed["tokens"] == uninterrupted["tokens"] == sum(token_count(t) for t in texts)
    assert resumed["tokens_uncommitted"] == 0


# ------------------------------------------------------------------------ item 12: another job's output


def _finished(tmp_path, fake, rows=300):
    src = write_parquet(tmp_path / "in.parquet", make_texts(rows, seed=26))
    job = job_for(tmp_path, fake, src, output={"shard_rows": 100})
    _run(fake, job)
    return job


def test_status_says_when_the_output_belongs_to_another_job_and_what_differs(tmp_path, fake):
    job = _finished(tmp_path, fake)
    refused = run_here(fake, "run", str(job), "--quiet", "--set", "output.shard_rows=70")
    assert refused.returncode == 1 and "output.shard_rows: 100 -> 70" in refused.stderr

    doc = json.loads(run_here(None, "status", str(job), "--json", "--set", "output.shard_rows=70").stdout)
    text = run_here(None, "status", str(job), "--set", "output.shard_rows=70").stdout

    assert doc["same_job"] is False and doc["complete"] is False
    assert doc["job_differences"] == ["output.shard_rows: 100 -> 70"]
    assert "state:    incomplete" in text
    assert "written by another job (output.shard_rows: 100 -> 70)" in text
    same = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert same["same_job"] is True and same["job_differences"] == [] and same["complete"] is True


def test_verify_fails_for_another_job_naming_every_setting_that_differs(tmp_path, fake):
    job = _finished(tmp_path, fake)

    other = run_here(None, "verify", str(job), "--set", "model.dimensions=8", "--set", "input.text=id")

    assert other.returncode == 1
    assert "FAIL: this output was written by another job" in other.stdout
    assert "input.text: 'text' -> 'id'" in other.stdout and "model.dimensions: None -> 8" in other.stdout
    assert run_here(None, "verify", str(job)).returncode == 0
