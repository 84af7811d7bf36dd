"""What a refresh says it did is what it did: files by state (unchanged files read again because they share a
packed shard are named as such), rows added/updated/removed counted by id, texts bought and reused, tokens
billed this run and for the table's current rows — in the summary, ``_report.json``, ``status`` and ``plan``,
for one process, a ``--shard`` split and the batch tier, also after a resumed run; and ``plan`` refuses, with
run's own sentence and a non-zero exit, what ``run`` would refuse."""

from __future__ import annotations

import json
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.testing.batchapi import FakeBatchProvider
from tests.conftest import cli_env, job_for, make_texts, run_cli, run_here, write_job
from tests.test_split_refresh import assert_table_is

SHARD = 100


def _write(path, ids, texts, row_group_size=50):
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)


def _days(tmp_path, fake, **sections):
    """day0 and day1 (250 rows each) and a job over them: (job, data folder, texts)."""
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(1000, seed=5)
    _write(data / "day0.parquet", list(range(250)), texts[:250])
    _write(data / "day1.parquet", list(range(250, 500)), texts[250:500])
    sections.setdefault("output", {})
    sections["output"] = {"shard_rows": SHARD, **sections["output"]}
    job = job_for(tmp_path, fake, data, limits={"batch_inputs": 25, "concurrency": 4}, **sections)
    return job, data, texts


def _day_two(data, texts) -> dict:
    """day1 rewritten (reordered; 10 texts edited, 20 rows deleted, 5 inserted) and day2 added (30 rows)."""
    ids = list(range(250, 500))
    new = dict(zip(ids, texts[250:500], strict=True))
    for i in ids[:10]:
        new[i] = f"edited text number {i}"
    for i in ids[100:120]:
        del new[i]
    for k in range(5):
        new[900 + k] = texts[900 + k]
    order = sorted(new, reverse=True)
    _write(data / "day1.parquet", order, [new[i] for i in order])
    _write(data / "day2.parquet", list(range(600, 630)), texts[600:630])
    return {**dict(enumerate(texts[:250])), **new, **dict(zip(range(600, 630), texts[600:630], strict=True))}


ROWS_BY_ID = {"added": 35, "updated": 10, "removed": 20, "unchanged_read_again": 220}
FILES = {
    "added": ["day2.parquet"],
    "changed": ["day1.parquet"],
    "grown": [],
    "removed": [],
    "touched": [],
    "unchanged_not_read": 1,
    "read_again_packed": [],
    "unchanged_unfinished": [],
}


def test_a_refresh_says_what_it_did_in_its_summary_report_status_and_plan(tmp_path, fake):
    job, data, texts = _days(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    before = json.loads(run_here(None, "status", str(job), "--json").stdout)
    want = _day_two(data, texts)
    plan = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    assert plan["refresh"]["rows"] == ROWS_BY_ID  # what the run will count, before anything is bought
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert len(fake.received_texts()) == 45  # 10 edited texts, 5 inserted rows, 30 rows of a new file
    err = result.stderr
    assert "rows written (45 embedded now, 220 reused from the output)" in err
    assert (
        "refresh (generation 1): 1 file added, 1 changed, 0 removed, 1 unchanged and not read; "
        "rows by id: 35 added, 10 updated, 20 removed (220 unchanged rows read again)"
    ) in err
    assert "texts: 45 bought, 220 reused from the output" in err
    out = tmp_path / "out"
    report = json.loads((out / "_report.json").read_text())
    assert report["refresh"]["files"] == FILES and report["refresh"]["rows"] == ROWS_BY_ID
    assert report["texts"] == {"bought": 45, "reused_from_output": 220}
    assert report["rows"]["bought"] == 45 and report["rows"]["reused_from_output"] == 220
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["refresh"]["rows"] == ROWS_BY_ID and status["tokens"] == report["tokens_for_current_rows"]
    # the table's rows cost what day one paid for the rows still there, plus what day two bought
    assert status["tokens"] > before["tokens"] and status["tokens_carried"] > 0
    text = run_here(None, "status", str(job)).stdout
    assert "for the table's current rows" in text and "rows by id: 35 added, 10 updated, 20 removed" in text
    assert_table_is(out, want)


def test_a_resumed_refresh_still_says_what_the_refresh_does(tmp_path, srv):
    job, data, texts = _days(tmp_path, srv)
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    want = _day_two(data, texts)
    killed = run_cli("run", str(job), "--quiet", env=cli_env(BATCHEMBED_FAILPOINT="shard-before-manifest"))
    assert killed.returncode == -signal.SIGKILL

    resumed = run_here(srv, "run", str(job), "--quiet")

    assert resumed.returncode == 0, resumed.stderr
    assert "refresh (generation 1): 1 file added, 1 changed, 0 removed, 1 unchanged and not read" in resumed.stderr
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["refresh"]["files"] == FILES and report["refresh"]["rows"] == ROWS_BY_ID
    assert_table_is(tmp_path / "out", want)


def test_small_files_read_again_because_they_share_a_packed_shard_are_said_so(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(240, seed=9)
    for f in range(12):  # 12 files of 20 rows: one packed shard
        _write(data / f"s{f:02d}.parquet", list(range(f * 20, f * 20 + 20)), texts[f * 20 : f * 20 + 20])
    job = job_for(tmp_path, fake, data, output={"shard_rows": 1000})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    edited = [f"edited {i}" if i < 3 else texts[i] for i in range(20)]
    _write(data / "s00.parquet", list(range(20)), edited)
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert len(fake.received_texts()) == 3
    assert "0 unchanged and not read, 11 unchanged but read again (they share a packed shard" in result.stderr
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert len(report["refresh"]["files"]["read_again_packed"]) == 11
    assert report["refresh"]["rows"] == {"added": 0, "updated": 3, "removed": 0, "unchanged_read_again": 237}


def test_tokens_for_the_current_rows_do_not_fall_when_a_refresh_reuses_every_vector(tmp_path, fake):
    job, data, texts = _days(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    paid = json.loads(run_here(None, "status", str(job), "--json").stdout)["tokens"]
    for name, lo in (("day0.parquet", 0), ("day1.parquet", 250)):  # both files rewritten, rows reordered
        ids = list(range(lo + 249, lo - 1, -1))
        _write(data / name, ids, [texts[i] for i in ids])
    fake.reset_records()

    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    assert fake.received_texts() == []
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert abs(status["tokens"] - paid) <= 0.01 * paid  # the same rows, carried at what they cost
    (data / "day1.parquet").unlink()
    assert run_here(fake, "run", str(job), "--quiet", "--allow-removal").returncode == 0
    half = json.loads(run_here(None, "status", str(job), "--json").stdout)["tokens"]
    assert 0.3 * paid < half < 0.7 * paid  # half the rows left: about half the tokens


def test_the_batch_tier_counts_what_its_batches_billed(tmp_path):
    fake = FakeBatchProvider(dim=16)
    inp = tmp_path / "in.parquet"
    texts = make_texts(300, seed=4)
    _write(inp, list(range(300)), texts)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(inp), "text": "text", "id": "id"},
            "model": {"provider": "openai", "base_url": fake.url, "name": "fake", "tier": "batch"}
            | {"batch_poll_seconds": 0, "batch_inputs": 120},
            "limits": {"batch_inputs": 32},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 100},
        },
    )
    env = cli_env(OPENAI_API_KEY="sk-test")
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    status = json.loads(run_here(None, "status", str(job), "--json", env=env).stdout)
    billed = report["batch"]["tokens_billed_this_run"]
    assert billed > 0 and report["tokens"] == billed and report["texts"]["bought"] == 300
    assert abs(status["tokens"] - billed) <= 0.01 * billed  # before: 0 tokens for a batch-tier output


def test_a_split_says_the_whole_outputs_figures_when_its_last_part_completes(tmp_path, fake):
    job, data, texts = _days(tmp_path, fake)
    for part in ("0/2", "1/2"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 0
    want = _day_two(data, texts)
    first = run_here(fake, "run", str(job), "--quiet", "--shard", "0/2")
    assert "refresh (generation 1): 1 file added, 1 changed" in first.stderr
    last = run_here(fake, "run", str(job), "--quiet", "--shard", "1/2")
    assert last.returncode == 0, last.stderr
    assert "rows by id: 35 added, 10 updated, 20 removed" in last.stderr
    out = tmp_path / "out"
    report = json.loads((out / "_report.shard-0001-of-0002.json").read_text())
    assert report["refresh"]["rows"] == ROWS_BY_ID
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["refresh"]["rows"] == ROWS_BY_ID and status["complete"]
    assert status["tokens"] == report["tokens_for_current_rows"]
    assert_table_is(out, want)


# -------------------------------------------------------------------------------------- plan refuses


def test_plan_refuses_another_jobs_settings_as_run_does(tmp_path, fake):
    job, _data, _texts = _days(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    changed = ["--set", "input.text={text}!"]

    plan = run_here(None, "plan", str(job), *changed)
    run = run_here(fake, "run", str(job), "--quiet", *changed)

    assert plan.returncode == 1 and run.returncode == 1
    sentence = run.stderr.removeprefix("batchembed: error: ").strip()
    assert f"refused: a run would stop before buying anything: {sentence}" in plan.stdout
    assert run_here(None, "plan", str(job), *changed, "--restart").returncode == 0


def test_plan_refuses_a_removal_over_the_guard_as_run_does(tmp_path, fake):
    job, data, texts = _days(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    (data / "day1.parquet").unlink()
    _write(data / "day0.parquet", [0, 1], texts[:2])  # a half-written upstream step

    plan = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    code = run_here(None, "plan", str(job)).returncode
    run = run_here(fake, "run", str(job), "--quiet")

    assert code == 1 and run.returncode == 1
    assert plan["refused"] == [run.stderr.removeprefix("batchembed: error: ").strip()]
    assert "--allow-removal" in plan["refused"][0]
    assert run_here(None, "plan", str(job), "--allow-removal").returncode == 0


@pytest.mark.parametrize("damage", ["older-version", "corrupt"])
def test_plan_refuses_an_output_run_cannot_resume(tmp_path, fake, damage):
    job, _data, _texts = _days(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    manifest = tmp_path / "out" / "_manifest.json"
    if damage == "older-version":
        doc = json.loads(manifest.read_text())
        doc["version"] = 1
        manifest.write_text(json.dumps(doc))
    else:
        manifest.write_text("{not json")

    plan = run_here(None, "plan", str(job))
    run = run_here(fake, "run", str(job), "--quiet")

    assert plan.returncode == 1 and run.returncode == 1
    assert run.stderr.removeprefix("batchembed: error: ").strip() in plan.stdout
