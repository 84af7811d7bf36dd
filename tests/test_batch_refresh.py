"""The batch tier run every day: after a finished day, a day that adds, removes, edits or appends rows
completes, buys only the texts not already in the output (a finished day's batch pieces are history, never
inputs), and leaves a table equal to the inputs; killed at any step of the tier during a refresh, the same
command completes it exactly."""

from __future__ import annotations

import json
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.run.batch.loop import FAILPOINTS as BATCH_FAILPOINTS
from batchembed.testing.batchapi import FakeBatchProvider, FakeBatchServer
from tests.conftest import cli_env, make_texts, run_cli, run_here, write_job
from tests.test_split_refresh import assert_table_is

ENV = cli_env(OPENAI_API_KEY="sk-test")
ROWS = 300
DAYS = ("add", "remove", "edit", "append")


def _write(path, ids, texts):
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())}), path)


def day_one(tmp_path, fake) -> tuple:
    """Two files of 300 rows and a batch-tier job over them: (job, input folder, {id: text})."""
    src = tmp_path / "in"
    src.mkdir()
    text_of = {}
    for f in range(2):
        ids = list(range(f * ROWS, (f + 1) * ROWS))
        texts = make_texts(ROWS, seed=20 + f)
        _write(src / f"f{f}.parquet", ids, texts)
        text_of.update(zip(ids, texts, strict=True))
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(src), "text": "text", "id": "id"},
            "model": {
                "provider": "openai",
                "base_url": fake.url,
                "name": "fake",
                "tier": "batch",
                "batch_poll_seconds": 0,
                "batch_inputs": 120,
            },
            "limits": {"batch_inputs": 32, "max_retries": 2},
            "output": {"path": str(tmp_path / "out"), "shard_rows": 200},
        },
    )
    return job, src, text_of


def day_two(src, text_of: dict, kind: str) -> tuple[dict, set[str]]:
    """The day's change: (the rows the table must hold, the texts that are new)."""
    want = dict(text_of)
    if kind == "add":
        ids = list(range(5000, 5100))
        texts = [f"added on day two {i}" for i in ids]
        _write(src / "f2.parquet", ids, texts)
        want.update(zip(ids, texts, strict=True))
        return want, set(texts)
    if kind == "remove":
        (src / "f0.parquet").unlink()
        return {i: t for i, t in want.items() if i >= ROWS}, set()
    ids = list(range(ROWS, 2 * ROWS))
    if kind == "edit":
        for i in ids[:7]:
            want[i] = f"edited on day two {i}"
        fresh = {want[i] for i in ids[:7]}
    else:
        assert kind == "append"
        extra = list(range(7000, 7040))
        want.update({i: f"appended on day two {i}" for i in extra})
        fresh = {want[i] for i in extra}
        ids += extra
    _write(src / "f1.parquet", ids, [want[i] for i in ids])
    return want, fresh


@pytest.mark.parametrize("kind", DAYS)
def test_a_batch_tier_day_after_a_finished_day_completes_and_buys_only_new_texts(tmp_path, kind):
    fake = FakeBatchProvider(dim=16)
    job, src, text_of = day_one(tmp_path, fake)
    assert run_here(fake, "run", str(job), "--quiet", env=ENV).returncode == 0
    want, fresh = day_two(src, text_of, kind)
    fake.billed_texts.clear()

    result = run_here(fake, "run", str(job), "--quiet", env=ENV)

    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_table_is(out, want)
    assert sorted(fake.billed_texts) == sorted(fresh)  # nothing the output holds is bought again
    assert fake.requests == []  # and nothing went online
    assert run_here(None, "verify", str(job), env=ENV).returncode == 0
    report = json.loads((out / "_report.json").read_text())
    assert report["texts"]["bought"] == len(fresh)
    assert report["tokens"] == report["batch"]["tokens_billed_this_run"]
    # a third day without change: nothing planned, nothing bought
    again = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.parametrize("point", [*BATCH_FAILPOINTS, "shard-before-manifest", "before-publish"])
def test_a_batch_tier_refresh_killed_at_every_step_completes_exactly(tmp_path, point):
    with FakeBatchServer(dim=16) as srv:
        srv.page_size = 2  # a batch created before the kill is on a later page of the list
        job, src, text_of = day_one(tmp_path, srv)
        assert run_cli("run", str(job), "--quiet", env=ENV).returncode == 0
        want, fresh = day_two(src, text_of, "append")
        extra = list(range(9000, 9130))  # and a new file: more than one batch to buy
        texts = [f"new file on day two {i}" for i in extra]
        _write(src / "f3.parquet", extra, texts)
        want.update(zip(extra, texts, strict=True))
        fresh |= set(texts)
        srv.billed_texts.clear()

        killed = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk", BATCHEMBED_FAILPOINT=point))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        done = run_cli("run", str(job), "--quiet", env=ENV)
        assert done.returncode == 0, done.stderr
        assert sorted(srv.billed_texts) == sorted(fresh)  # every new text billed exactly once, nothing else
    assert_table_is(tmp_path / "out", want)
    assert run_cli("verify", str(job), env=ENV).returncode == 0
