"""A ``--shard I/N`` split refreshed day after day: which units a part owns in a generation never depends on
what only another part knows, so whatever the change (a new first file, rows appended to the first file, a
removed middle file), the parts run one after another or together, killed or not, the Delta table equals
the inputs exactly and only new texts are bought."""

from __future__ import annotations

import io
import json
import os
import signal
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchembed.testing import expected_vector
from tests.conftest import cli_env, job_for, kill_held, make_texts, run_cli, run_here, start_cli, write_job

ROWS, SHARD = 1000, 600
CHANGES = ("new-first-file", "rows-appended-to-the-first-file", "middle-file-removed")


def day_one(tmp_path):
    """Three Parquet files of 1,000 rows (ids unique across them): (folder, {id: text})."""
    src = tmp_path / "in"
    src.mkdir()
    text_of = {}
    for f in range(3):
        ids = [f * ROWS + i for i in range(ROWS)]
        texts = make_texts(ROWS, seed=f)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), src / f"f{f}.parquet")
        text_of.update(zip(ids, texts, strict=True))
    return src, text_of


def change(src, text_of: dict, kind: str) -> tuple[dict, set[str]]:
    """Day two's inputs: (the rows the table must hold then, the texts that are new)."""
    want = dict(text_of)
    if kind == "new-first-file":  # sorts before f0: every later unit of the generation moves
        ids = list(range(90_000, 90_300))
        texts = [f"a new first file, row {i}" for i in ids]
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), src / "e.parquet")
        want.update(zip(ids, texts, strict=True))
        return want, set(texts)
    if kind == "rows-appended-to-the-first-file":
        extra = list(range(80_000, 80_300))
        want.update({i: f"appended row {i}" for i in extra})
        ids = list(range(ROWS)) + extra
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [want[i] for i in ids]}), src / "f0.parquet")
        return want, {want[i] for i in extra}
    assert kind == "middle-file-removed"
    (src / "f1.parquet").unlink()
    for i in range(ROWS, 2 * ROWS):
        del want[i]
    return want, set()


def table_rows(out) -> pa.Table:
    """The Delta table's current rows (its files read with a plain Parquet reader: no abort at exit)."""
    return ds.dataset(DeltaTable(str(out)).file_uris(), format="parquet").to_table(columns=["id", "embedding"])


def assert_table_is(out, want: dict) -> None:
    """Every id of the inputs once, with the vector of its current text; nothing else."""
    table = table_rows(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice in the table"
    assert sorted(ids) == sorted(want)
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = np.stack([expected_vector(want[i], 16) for i in ids])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def split_job(tmp_path, fake, src, **sections):
    return job_for(tmp_path, fake, src, output={"shard_rows": SHARD}, **sections)


def run_parts(fake, job, count: int, order=None) -> None:
    for index in order or range(count):
        result = run_here(fake, "run", str(job), "--quiet", "--shard", f"{index}/{count}")
        assert result.returncode == 0, result.stderr


def run_together(job, count: int) -> None:
    procs = [start_cli("run", str(job), "--quiet", "--shard", f"{i}/{count}") for i in range(count)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def settled(tmp_path, fake, job, want: dict, fresh: set[str]) -> None:
    """The table equals the inputs, only new texts were bought (at most 5% more rows), `verify` agrees."""
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_table_is(out, want)
    bought = fake.received_texts()
    assert set(bought) <= fresh
    assert len(bought) <= 1.05 * len(fresh), f"{len(bought)} rows billed for {len(fresh)} new texts"
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] and status["up_to_date"]


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("kind", CHANGES)
def test_parts_run_one_after_another_refresh_exactly(tmp_path, fake, kind, count):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, fake, src)
    run_parts(fake, job, count)
    want, fresh = change(src, text_of, kind)
    fake.reset_records()

    run_parts(fake, job, count, order=reversed(range(count)))

    settled(tmp_path, fake, job, want, fresh)
    # a day with no change after it: nothing read, nothing bought
    fake.reset_records()
    run_parts(fake, job, count)
    assert fake.requests == []


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("kind", CHANGES)
def test_parts_run_together_refresh_exactly(tmp_path, srv, kind, count):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src)
    run_parts(srv, job, count)
    want, fresh = change(src, text_of, kind)
    srv.reset_records()

    run_together(job, count)

    settled(tmp_path, srv, job, want, fresh)


# ------------------------------------------------------------------------------------------- kills

#: Steps of a split refresh a kill may hit: the first part plans and joins, commits; the last publishes.
FIRST_PART_POINTS = ["split-planned", "refresh-begun", "shard-before-manifest"]
LAST_PART_POINTS = ["before-publish", "published-before-retire", "retired-before-delete"]
#: Kill tests send small requests: what a kill may cost is the requests in flight (2 x 10 texts) and the
#: answers still queued for the journal.
KILL_LIMITS = {"batch_inputs": 10, "concurrency": 2}
IN_FLIGHT = 4 * 10


def kill_settled(tmp_path, srv, job, old: dict, want: dict, fresh: set[str]) -> None:
    """After a kill: a reader sees the old table or the new one, whole; every part run again: exact."""
    out = tmp_path / "out"
    seen = sorted(table_rows(out).column("id").to_pylist())
    assert seen in (sorted(old), sorted(want))
    run_parts(srv, job, 2)
    assert_table_is(out, want)
    bought = srv.received_texts()
    assert set(bought) <= fresh
    assert len(bought) <= 1.05 * len(fresh) + IN_FLIGHT, f"{len(bought)} rows billed for {len(fresh)} new texts"
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("point", FIRST_PART_POINTS + LAST_PART_POINTS)
def test_sigkill_at_each_step_of_a_split_refresh(tmp_path, srv, point):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src, limits=KILL_LIMITS)
    run_parts(srv, job, 2)
    want, fresh = change(src, text_of, "rows-appended-to-the-first-file")
    srv.reset_records()
    env = cli_env(BATCHEMBED_FAILPOINT=point)

    if point in FIRST_PART_POINTS:
        killed = run_cli("run", str(job), "--quiet", "--shard", "0/2", env=env)
    else:
        run_parts(srv, job, 2, order=[0])
        killed = run_cli("run", str(job), "--quiet", "--shard", "1/2", env=env)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kill_settled(tmp_path, srv, job, text_of, want, fresh)


def start_part(job, index: int, count: int, env=None):
    return start_cli("run", str(job), "--quiet", "--shard", f"{index}/{count}", env=env)


@pytest.mark.parametrize("kind", CHANGES)
def test_a_part_killed_with_requests_in_flight_then_every_part_run_again(tmp_path, srv, kind):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src, limits=KILL_LIMITS)
    run_parts(srv, job, 3)
    want, fresh = change(src, text_of, kind)
    fresh = fresh or {"nothing to buy"}
    srv.reset_records()
    if kind != "middle-file-removed":  # (a removal buys nothing: no request to kill in)
        # the part with texts to buy: part 0 owns the new first file's unit; appended to the first file, the
        # new rows start in the generation's second unit (its first holds rows the output has), part 1's
        buyer = 0 if kind == "new-first-file" else 1
        proc = start_part(job, buyer, 3)
        srv.wait_for_requests(3, timeout=120)  # the canary and two requests of its own units
        srv.hold()
        kill_held(proc, srv)

    run_parts(srv, job, 3, order=[2, 0, 1])

    settled_after_kill(tmp_path, srv, job, want, fresh)


def settled_after_kill(tmp_path, srv, job, want: dict, fresh: set[str]) -> None:
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_table_is(out, want)
    bought = srv.received_texts()
    assert set(bought) <= fresh
    assert len(bought) <= 1.05 * len(fresh) + IN_FLIGHT, f"{len(bought)} rows billed for {len(fresh)} new texts"
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("count", [2, 3])
def test_parts_run_together_one_killed_then_run_again(tmp_path, srv, count):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src, limits=KILL_LIMITS)
    run_parts(srv, job, count)
    want, fresh = change(src, text_of, "new-first-file")
    srv.reset_records()
    procs = [start_part(job, i, count) for i in range(count)]
    srv.wait_for_requests(count + 2, timeout=120)
    srv.hold()
    kill_held(procs[0], srv)  # the others go on: their answers are released with the hold
    for proc in procs[1:]:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    run_parts(srv, job, count, order=[0])

    settled_after_kill(tmp_path, srv, job, want, fresh)


def test_a_part_still_running_an_older_plan_writes_nothing_the_newer_plan_keeps_twice(tmp_path, srv):
    # day two begins (a new first file, part 0's to embed); part 0 is still running it when the inputs change
    # again (a new last file) and part 1 plans generation 2 beside it: what part 0 commits late is not in
    # that plan, so it leaves with part 0's next run (its vectors reused) and no row is published twice
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src, limits=KILL_LIMITS)
    run_parts(srv, job, 2)
    want, fresh = change(src, text_of, "new-first-file")
    srv.reset_records()
    late = start_part(job, 0, 2)
    srv.wait_for_requests(3, timeout=120)
    srv.hold()
    srv.wait_for_held(1, timeout=60)
    os.kill(late.pid, signal.SIGSTOP)  # frozen mid-refresh (a paused VM, a swapped-out process)
    srv.release()
    ids = list(range(70_000, 70_200))
    last = [f"a new last file, row {i}" for i in ids]
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": last}), src / "g.parquet")
    want.update(zip(ids, last, strict=True))
    fresh |= set(last)
    run_parts(srv, job, 2, order=[1])  # plans generation 2 and does its own units while part 0 is frozen
    os.kill(late.pid, signal.SIGCONT)
    _, err = late.communicate(timeout=300)
    assert late.returncode == 0, err
    assert "run it again" in err  # it finished generation 1: the split is in generation 2 now
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    plan = json.loads((out / "_split.json").read_text())
    part0 = json.loads((out / "_manifest.shard-0000-of-0002.json").read_text())
    late_units = [s["name"] for s in part0["shards"] if s["unit"] == "part-1000000"]
    assert plan["generation"] == 2 and late_units and not set(late_units) & set(plan["kept"])

    run_parts(srv, job, 2, order=[0])

    settled_after_kill(tmp_path, srv, job, want, fresh)


# ------------------------------------------------------------------------------------------- a bucket


def test_split_refresh_in_a_bucket_with_parts_together_and_one_killed(tmp_path, s3, srv):
    bucket = s3.new_bucket()
    text_of = {}
    for f in range(3):
        ids = [f * ROWS + i for i in range(ROWS)]
        texts = make_texts(ROWS, seed=f)
        s3.put_table(bucket, f"in/f{f}.parquet", pa.table({"id": pa.array(ids, pa.int64()), "text": texts}))
        text_of.update(zip(ids, texts, strict=True))
    env = cli_env(**s3.env())
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": f"s3://{bucket}/in/*.parquet", "text": "text", "id": "id"},
            "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake", "timeout": 5.0},
            "limits": {**KILL_LIMITS, "max_retries": 4},
            "output": {"path": f"s3://{bucket}/out", "shard_rows": SHARD},
            "storage": {"lease_seconds": 30},
        },
    )
    for i in range(2):
        assert run_here(srv, "run", str(job), "--quiet", "--shard", f"{i}/2", env=env).returncode == 0
    # day two: a new first file, and rows appended to the (now second) file f0
    new_ids = list(range(90_000, 90_300))
    new_texts = [f"a new first file, row {i}" for i in new_ids]
    s3.put_table(bucket, "in/e.parquet", pa.table({"id": pa.array(new_ids, pa.int64()), "text": new_texts}))
    extra = list(range(80_000, 80_200))
    want = {**text_of, **dict(zip(new_ids, new_texts, strict=True)), **{i: f"appended row {i}" for i in extra}}
    f0 = list(range(ROWS)) + extra
    s3.put_table(bucket, "in/f0.parquet", pa.table({"id": pa.array(f0, pa.int64()), "text": [want[i] for i in f0]}))
    fresh = set(new_texts) | {want[i] for i in extra}
    srv.reset_records()

    procs = [start_part(job, i, 2, env=env) for i in range(2)]
    srv.wait_for_requests(4, timeout=120)
    srv.hold()
    kill_held(procs[0], srv)
    sent_before_kill = {text for r in srv.requests if r.kind == "embeddings" for text in r.inputs}
    _, err = procs[1].communicate(timeout=300)
    assert procs[1].returncode == 0, err
    again = run_here(srv, "run", str(job), "--quiet", "--shard", "0/2", env=env)  # its lease: taken over
    assert again.returncode == 0, again.stderr

    assert s3.get(bucket, "out/_SUCCESS") is not None
    options = {**s3.env(), "AWS_ALLOW_HTTP": "true"}
    options.pop("AWS_EC2_METADATA_DISABLED")
    uris = DeltaTable(f"s3://{bucket}/out", storage_options=options).file_uris()
    keys = [uri.split(f"s3://{bucket}/", 1)[1] for uri in uris]
    table = pa.concat_tables(pq.read_table(io.BytesIO(s3.get(bucket, key))) for key in keys)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(want)
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, np.stack([expected_vector(want[i], 16) for i in ids]), atol=1e-6)
    bought = Counter(srv.received_texts())
    # A journal in a bucket is put once a second, so the killed part may lose the answers of its last
    # second as well as those in flight: texts sent before the kill, and only those, may be bought a
    # second time. (A bound of 5% over the fresh texts held on an idle machine and failed under CI's load,
    # 580 for 565: that part had not put its journal yet when it was killed.)
    twice = {text for text, n in bought.items() if n > 1}
    assert set(bought) <= fresh and max(bought.values()) <= 2
    assert twice <= sent_before_kill, sorted(twice - sent_before_kill)[:10]
    verify = run_here(None, "verify", str(job), env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
