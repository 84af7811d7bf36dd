"""What ``status`` and ``verify`` answer about an output, and the small inputs that must not stop a job:
mixed id types, another job's settings, failure files of a split output, a run holding the output."""

from __future__ import annotations

import json
import signal

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchembed.testing import token_count
from tests.conftest import hold_mid_run, job_for, kill_mid_run, make_texts, run_here, start_cli, write_parquet


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
        kill_mid_run(srv, job, len(srv.requests) + more)
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
    # complete, for the job that wrote it: never "incomplete" for a complete output of another job
    assert "state:    complete (written by another job: see below)" in text
    assert "written by another job (output.shard_rows: 100 -> 70)" in text
    same = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert same["same_job"] is True and same["job_differences"] == [] and same["complete"] is True


def test_verify_fails_for_another_job_naming_every_setting_that_differs(tmp_path, fake):
    job = _finished(tmp_path, fake)

    other = run_here(None, "verify", str(job), "--set", "model.dimensions=8", "--set", "input.text=id")

    assert other.returncode == 1
    assert "FAIL: this output was written by another job" in other.stdout
    assert "input.text: 'text' -> 'id'" in other.stdout and "model.dimensions: not set -> 8" in other.stdout
    assert "None" not in other.stdout
    assert run_here(None, "verify", str(job)).returncode == 0


# ------------------------------------------------------------- item 9, 16: split outputs and live runs


def _split_job(tmp_path, fake, rows=600):
    texts = make_texts(rows, seed=27)
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=100)
    limits = {"batch_inputs": 10, "concurrency": 2, "max_retries": 2}
    return texts, job_for(tmp_path, fake, src, limits=limits, output={"shard_rows": 100})


def test_status_of_a_split_output_names_the_failure_files_that_exist(tmp_path, fake):
    texts, job = _split_job(tmp_path, fake)
    fake.poison = {texts[5], texts[150]}  # row 5 is in part 0's unit 0, row 150 in part 1's unit 1
    for part in ("0/2", "1/2"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 3
    out = tmp_path / "out"
    files = ["_failed.shard-0000-of-0002.parquet", "_failed.shard-0001-of-0002.parquet"]
    assert all((out / f).exists() for f in files) and not (out / "_failed.parquet").exists()

    doc = json.loads(run_here(None, "status", str(job), "--json").stdout)
    text = run_here(None, "status", str(job)).stdout

    assert doc["failed_rows"] == 2 and doc["failed_files"] == files
    assert f"failed:   2 rows, listed in {', '.join(files)}" in text
    assert "_failed.parquet" not in text


def test_a_finished_split_output_leaves_no_journal_directory(tmp_path, fake):
    _texts, job = _split_job(tmp_path, fake)
    for part in ("0/3", "1/3", "2/3"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 0
    out = tmp_path / "out"

    assert (out / "_SUCCESS").exists()
    assert not (out / "_journal").exists()
    assert run_here(None, "verify", str(job)).returncode == 0


def test_a_part_tells_a_part_still_running_from_one_that_was_killed(tmp_path, srv, fake):
    _texts, job = _split_job(tmp_path, srv, rows=1200)
    killed = start_cli("run", str(job), "--quiet", "--shard", "1/3")
    srv.wait_for_requests(5, timeout=None)
    srv.hold()  # every answer waits from here on
    srv.wait_for_held(1, timeout=None)
    killed.send_signal(signal.SIGKILL)  # part 1 dies mid-run
    killed.wait()
    running = start_cli("run", str(job), "--quiet", "--shard", "0/3")
    try:
        srv.wait_for_held(srv.held + 1, timeout=None)  # part 0 is mid-run, holding its lock

        last = run_here(fake, "run", str(job), "--quiet", "--shard", "2/3")  # answered in-process

        assert last.returncode == 0, last.stderr
        assert "part 2/3 complete; still running: part 0/3;" in last.stderr
        assert "not complete and not running (never started, stopped or killed): part 1/3" in last.stderr
        assert "other parts are still running" not in last.stderr
    finally:
        srv.release()
        assert running.wait() == 0


def test_status_and_verify_say_that_a_run_is_writing_the_output_now(tmp_path, srv):
    _texts, job = _split_job(tmp_path, srv, rows=1200)
    proc = hold_mid_run(srv, job, 5)
    try:
        doc = json.loads(run_here(None, "status", str(job), "--json").stdout)
        text = run_here(None, "status", str(job)).stdout
        verify = run_here(None, "verify", str(job))
    finally:
        srv.release()
    assert proc.wait() == 0

    assert [(w["lease"], w["part"]) for w in doc["running"]] == [("_lease/job", None)]
    assert f"pid {proc.pid} on host" in doc["running"][0]["holder"]
    assert f"running:  a run holds this output now: pid {proc.pid} on host" in text
    assert verify.returncode == 1
    assert f"FAIL: the job is still running (pid {proc.pid} on host" in verify.stdout
    after = run_here(None, "status", str(job)).stdout
    assert "running:  no run holds this output's lock or lease now" in after
    assert run_here(None, "verify", str(job)).returncode == 0
