"""The batch tier killed with SIGKILL at every step (a real ``batchembed`` process against the fake batch
API on loopback), then run again: no batch created twice, no text billed twice, no row lost or doubled."""

from __future__ import annotations

import signal

import pytest

from batchembed.run.batch.loop import FAILPOINTS as BATCH_FAILPOINTS
from batchembed.testing.batchapi import FakeBatchServer
from tests.conftest import assert_vectors, cli_env, make_texts, read_output, run_cli, start_cli
from tests.test_batch_tier import batch_job

#: Every step where a kill hurts: around each remote call, and the commit of a unit.
FAILPOINTS = [*BATCH_FAILPOINTS, "shard-before-manifest"]


@pytest.mark.parametrize("point", FAILPOINTS)
def test_sigkill_at_each_step_buys_nothing_twice(tmp_path, point):
    texts = make_texts(400) + make_texts(100)
    with FakeBatchServer(dim=16) as srv:
        srv.page_size = 2  # the list is paged: a batch created before the kill is on a later page
        job = batch_job(tmp_path, srv, texts)
        killed = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk", BATCHEMBED_FAILPOINT=point))
        assert killed.returncode == -9, killed.stderr
        done = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk"))
        assert done.returncode == 0, done.stderr
        tags = [c["metadata"]["batchembed_piece"] for c in srv.created]
        assert len(tags) == len(set(tags)) == 4  # 400 distinct texts in pieces of at most 120: never one twice
        assert sorted(srv.billed_texts) == sorted(set(texts))  # every distinct text billed exactly once
    table = read_output(tmp_path / "out")
    assert table.num_rows == len(texts)
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert run_cli("verify", str(job), env=cli_env()).returncode == 0


def test_ctrl_c_while_waiting_leaves_the_batches_running(tmp_path):
    texts = make_texts(200)
    with FakeBatchServer(dim=16) as srv:
        srv.hold_batches = True
        job = batch_job(tmp_path, srv, texts, batch_poll_seconds=0.05)
        proc = start_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk"))
        srv.wait_for_batches(2, timeout=None)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        assert proc.returncode == 130, err
        assert "keep running at the provider" in err and "batchembed cancel" in err
        assert srv.running() == 2  # nothing cancelled
        srv.hold_batches = False
        done = run_cli("run", str(job), "--quiet", env=cli_env(OPENAI_API_KEY="sk"))
        assert done.returncode == 0, done.stderr
        assert len(srv.created) == 2 and sorted(srv.billed_texts) == sorted(texts)
