"""Exactly-once resume: real processes killed with SIGKILL, signals, fingerprints, corrupt state."""

from __future__ import annotations

import json
import signal

import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    assert_vectors,
    cli_env,
    hold_mid_run,
    job_for,
    kill_mid_run,
    make_texts,
    read_output,
    run_cli,
    run_here,
    write_parquet,
)

N = 1200
SHARD = 200
BATCH = 20
CONCURRENCY = 4


@pytest.fixture
def dataset(tmp_path):
    texts = make_texts(N, seed=7)
    return texts, write_parquet(tmp_path / "in.parquet", texts, row_group_size=100)


def _job(tmp_path, srv, src, **sections):
    limits = {"batch_inputs": BATCH, "concurrency": CONCURRENCY, "max_retries": 6}
    limits.update(sections.pop("limits", {}))
    return job_for(tmp_path, srv, src, limits=limits, output={"shard_rows": SHARD}, **sections)


def _assert_exactly_once(tmp_path, job, texts):
    out = tmp_path / "out"
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == list(range(N))
    assert table.column("id").to_pylist() == list(range(N))  # range shards in order
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert (out / "_SUCCESS").exists()
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("kill_after", [1, 12, 35, 55])
def test_sigkill_at_any_point_then_resume_is_exactly_once(tmp_path, srv, dataset, kill_after):
    texts, src = dataset
    srv.latency = 0.005
    job = _job(tmp_path, srv, src)
    kill_mid_run(srv, job, kill_after)

    result = run_here(srv, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    _assert_exactly_once(tmp_path, job, texts)
    # Re-sent at most what was in flight: the read-ahead window of 4 pieces, here each at most one
    # 200-row shard (a full re-run would send 2 * N).
    sent = len(srv.all_texts())
    assert sent <= N + 4 * SHARD, sent


@pytest.mark.parametrize("point", ["manifest-before-rename", "shard-before-manifest"])
def test_sigkill_inside_the_commit_protocol(tmp_path, srv, dataset, point):
    texts, src = dataset
    job = _job(tmp_path, srv, src)
    crashed = run_cli("run", str(job), "--quiet", env=cli_env(BATCHEMBED_FAILPOINT=point))
    assert crashed.returncode == -signal.SIGKILL
    out = tmp_path / "out"
    assert list(out.glob("*.tmp")) or list(out.glob("part-*.parquet"))  # it died holding uncommitted work

    result = run_here(srv, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert not list(out.glob("*.tmp"))
    _assert_exactly_once(tmp_path, job, texts)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_cleanly_and_resume(tmp_path, srv, dataset, sig, code):
    texts, src = dataset
    job = _job(tmp_path, srv, src)
    proc = hold_mid_run(srv, job, 30)  # requests are in flight when the signal lands
    proc.send_signal(sig)
    srv.release()
    _, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    assert "run the same command again to resume" in stderr.lower()

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(tmp_path, job, texts)


def test_finished_job_rerun_is_a_noop(tmp_path, fake, dataset):
    _texts, src = dataset
    job = _job(tmp_path, fake, src)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0
    assert "already complete" in result.stderr
    assert fake.requests == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")} == before


def test_fingerprint_change_is_refused_and_restart_works(tmp_path, fake, dataset):
    texts, src = dataset
    job = _job(tmp_path, fake, src)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    refused = run_here(fake, "run", str(job), "--set", "model.dimensions=8")
    assert refused.returncode == 1
    assert "model.dimensions: not set -> 8" in refused.stderr and "--restart" in refused.stderr
    assert "None" not in refused.stderr

    # settings that do not change vectors may change
    assert run_here(fake, "run", str(job), "--set", "limits.concurrency=2").returncode == 0

    restarted = run_here(fake, "run", str(job), "--set", "model.dimensions=8", "--restart", "--quiet")
    assert restarted.returncode == 0, restarted.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)


def test_changed_input_file_is_refreshed_and_its_old_failures_dropped(tmp_path, fake, dataset):
    texts, src = dataset
    job = _job(tmp_path, fake, src)
    fake.poison = {texts[3]}
    assert run_here(fake, "run", str(job), "--quiet").returncode == 3
    write_parquet(src, texts[:-1])
    fake.poison = set()
    fake.reset_records()
    refreshed = run_here(fake, "run", str(job), "--quiet")
    assert refreshed.returncode == 0, refreshed.stderr
    assert fake.received_texts() == [texts[3]]  # only the row that had failed is bought; the rest is reused
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == list(range(N - 1))
    assert_vectors(table, dict(enumerate(texts[:-1])), 16)
    assert not (tmp_path / "out" / "_failed.parquet").exists()


def test_failed_rows_are_retried_into_a_shard(tmp_path, fake, dataset):
    texts, src = dataset
    job = _job(tmp_path, fake, src)
    fake.poison = {texts[3], texts[700]}
    first = run_here(fake, "run", str(job), "--quiet")
    assert first.returncode == 3
    out = tmp_path / "out"
    assert pq.read_table(out / "_failed.parquet").column("row").to_pylist() == [3, 700]
    assert run_here(fake, "verify", str(job)).returncode == 1  # rows outstanding

    fake.poison = set()
    fake.reset_records()
    second = run_here(fake, "run", str(job), "--quiet")

    assert second.returncode == 0, second.stderr
    assert sorted(fake.received_texts()) == sorted([texts[3], texts[700]])  # only the failed rows
    assert not (out / "_failed.parquet").exists()
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == list(range(N))
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert run_here(fake, "verify", str(job)).returncode == 0


def test_no_retry_failed_leaves_them(tmp_path, fake, dataset):
    texts, src = dataset
    job = _job(tmp_path, fake, src)
    fake.poison = {texts[3]}
    assert run_here(fake, "run", str(job), "--quiet").returncode == 3
    fake.poison = set()
    again = run_here(fake, "run", str(job), "--quiet", "--no-retry-failed")
    assert again.returncode == 3


def test_corrupt_manifest_is_refused(tmp_path, srv, dataset):
    _texts, src = dataset
    job = _job(tmp_path, srv, src)
    kill_mid_run(srv, job, 40)
    manifest = tmp_path / "out" / "_manifest.json"
    manifest.write_text(manifest.read_text()[:-40])
    result = run_here(srv, "run", str(job))
    assert result.returncode == 1
    assert "_manifest.json is corrupt" in result.stderr and "--restart" in result.stderr


def test_truncated_shard_is_detected(tmp_path, fake, dataset):
    _texts, src = dataset
    job = _job(tmp_path, fake, src)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    (shard,) = (tmp_path / "out").glob("part-00002-*.parquet")
    shard.write_bytes(shard.read_bytes()[:-100])
    # a complete job is re-checked by verify; an incomplete one on resume
    verify = run_here(fake, "verify", str(job))
    assert verify.returncode == 1 and shard.name in verify.stdout
    (tmp_path / "out" / "_SUCCESS").unlink()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["complete"] is True
    resumed = run_here(fake, "run", str(job))
    assert resumed.returncode == 1 and shard.name in resumed.stderr


def test_status_reports_progress(tmp_path, srv, dataset):
    _texts, src = dataset
    job = _job(tmp_path, srv, src)
    kill_mid_run(srv, job, 1)
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] is False and status["rows_total"] == N and status["shards_total"] == N // SHARD
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] is True and status["rows_done"] == N and status["shards_done"] == N // SHARD
    assert status["tokens"] > 0
    text = run_here(None, "status", str(job)).stdout
    assert "complete" in text and f"{N:,}" in text


def test_second_ctrl_c_exits_at_once_and_the_next_run_resumes(tmp_path, srv, dataset):
    texts, src = dataset
    job = _job(tmp_path, srv, src)
    proc = hold_mid_run(srv, job, 30)  # requests stay in flight: the first Ctrl-C alone would wait for them
    proc.send_signal(signal.SIGINT)
    proc.stderr.readline()  # "SIGINT: finishing requests in flight ..." — the first signal was handled
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    srv.release()
    assert proc.returncode == 130
    assert "stopped at once" in stderr

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(tmp_path, job, texts)
