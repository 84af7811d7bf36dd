"""One output, one set of writers: a whole run, ``--restart``, the parts of one split, a Ray driver.

Whoever writes an output excludes every other kind of writer, locally (``flock``) and in a bucket
(leases on a real moto S3 server), whichever starts first, and a finished split stays finished.
"""

from __future__ import annotations

import json

import pytest

from batchembed.fs.location import StorageOptions, locate
from batchembed.output.commit import JobOutput
from batchembed.output.split_part import SplitPart
from batchembed.output.store.locks import OutputLocked
from tests.conftest import (
    assert_vectors,
    cli_env,
    daily_files,
    environment,
    job_for,
    read_output,
    run_here,
    start_cli,
)

ROWS = 300


def _inputs(tmp_path, files: int = 3, rows: int = ROWS):
    return daily_files(tmp_path, files, rows)


# ------------------------------------------------------------------- admission, writer by writer


WRITERS = {
    "whole": (None, False),
    "restart": (None, True),
    "part 0/3": ((0, 3), False),
    "part 1/3": ((1, 3), False),
    "part 1/2": ((1, 2), False),
    "part 0/3 --restart": ((0, 3), True),
}


def _may_share(first: str, second: str) -> bool:
    """Only two different parts of one split run side by side (``--restart`` of a part touches only its own)."""
    a, b = WRITERS[first][0], WRITERS[second][0]
    return a is not None and b is not None and a[1] == b[1] and a[0] != b[0]


def _output(kind: str, uri: str):
    part, restart = WRITERS[kind]
    from batchembed.output.store.local import LocalStore
    from batchembed.output.store.objects import ObjectStore

    where = locate(uri, StorageOptions(None, None, False), "output.path")
    store = LocalStore(where) if where.is_local else ObjectStore(where, lease_seconds=30)
    output = JobOutput(store, "zstd") if part is None else JobOutput(store, "zstd", SplitPart(part))
    return output, restart


def _pairs():
    return [(a, b) for a in WRITERS for b in WRITERS]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_writer_once_admitted_excludes_every_other_kind_before_it_writes_anything(tmp_path, where, request):
    """The moment after admission and before any manifest is written is the race of runs started
    together: the first admitted holds the output, the second is refused, whatever their kinds."""
    env = cli_env()
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        env.update(s3.env())
    outcomes = {}
    with environment(env):
        for n, (first_kind, second_kind) in enumerate(_pairs()):
            uri = str(tmp_path / f"out{n}") if where == "local" else f"s3://{s3.new_bucket()}/out"
            first, first_restart = _output(first_kind, uri)
            second, second_restart = _output(second_kind, uri)
            first.acquire(first_restart)
            try:
                second.acquire(second_restart)
                outcomes[(first_kind, second_kind)] = "runs"
                second.release()
            except OutputLocked as exc:
                outcomes[(first_kind, second_kind)] = "refused"
                assert "--restart" not in str(exc), str(exc)
            finally:
                first.release()
            # once the first is gone, the second is admitted (nothing was written: no kind is recorded)
            second.acquire(second_restart)
            second.release()
    expected = {pair: "runs" if _may_share(*pair) else "refused" for pair in outcomes}
    assert outcomes == expected


# ------------------------------------------------------------------------ A: --restart vs parts


def _three_parts_held(srv, job, env=None):
    """Three ``--shard I/3`` processes admitted, their canaries parked by the server."""
    srv.hold()
    procs = [start_cli("run", str(job), "--quiet", "--shard", f"{i}/3", env=env) for i in range(3)]
    srv.wait_for_held(3, timeout=None)
    return procs


def _finish(procs, srv):
    srv.release()
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err


def test_restart_and_plain_run_are_refused_while_parts_run_and_the_parts_finish_exact(tmp_path, srv, fake):
    src, text_of = _inputs(tmp_path)
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 16})
    out = tmp_path / "out"
    procs = _three_parts_held(srv, job)
    try:
        restart = run_here(fake, "run", str(job), "--quiet", "--restart")
        plain = run_here(fake, "run", str(job), "--quiet")
        other_split = run_here(fake, "run", str(job), "--quiet", "--shard", "1/2")
    finally:
        _finish(procs, srv)

    for refused in (restart, plain):
        assert refused.returncode == 1
        assert "being written by --shard parts right now" in refused.stderr, refused.stderr
        assert "--restart" not in refused.stderr  # a restart would delete the parts' paid work
    assert other_split.returncode == 1 and "split into 3 parts right now" in other_split.stderr
    assert fake.requests == []  # none of them sent anything
    assert not (out / "_manifest.json").exists()
    assert (out / "_SUCCESS").exists()
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_on_s3_restart_is_refused_while_parts_run_and_the_parts_finish_exact(tmp_path, srv, fake, s3):
    bucket = s3.new_bucket()
    src, text_of = _inputs(tmp_path)
    env = cli_env(**s3.env())
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 16}, output={"path": f"s3://{bucket}/out"})
    procs = _three_parts_held(srv, job, env=env)
    try:
        restart = run_here(fake, "run", str(job), "--quiet", "--restart", env=env)
    finally:
        _finish(procs, srv)

    assert restart.returncode == 1 and "being written by --shard parts right now" in restart.stderr
    assert "--restart" not in restart.stderr
    keys = s3.keys(bucket, "out/")
    assert "out/_SUCCESS" in keys and "out/_manifest.json" not in keys
    table = s3.read_output(bucket, "out")
    assert sorted(table.column("id").to_pylist()) == sorted(text_of)
    assert_vectors(table, text_of, 16)
    verify = run_here(None, "verify", str(job), env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ----------------------------------------------------------- B: splits started at the same moment


def test_two_splits_started_together_one_runs_the_other_is_refused(tmp_path, srv):
    src, text_of = _inputs(tmp_path)
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 16})

    procs = [start_cli("run", str(job), "--quiet", "--shard", part) for part in ("0/3", "1/2")]
    results = [p.communicate(timeout=240) for p in procs]

    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [err for _, err in results]
    winner = next(i for i, p in enumerate(procs) if p.returncode == 0)
    count = (3, 2)[winner]
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    table = read_output(tmp_path / "out")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == status["rows_done"]  # no unit written twice
    assert_vectors(table, text_of, 16)
    manifests = sorted(p.name for p in (tmp_path / "out").glob("_manifest*.json"))
    index = (0, 1)[winner]
    assert manifests == [f"_manifest.shard-{index:04d}-of-{count:04d}.json"]
    # the refused one gives one piece of advice, the one the output now holds
    _, loser_err = results[1 - winner]
    assert f"--shard I/{count}" in loser_err, loser_err


# ------------------------------------------------------------------------ C and the last part


def test_finished_split_rerun_as_a_plain_run_has_nothing_to_do(tmp_path, fake):
    src, _ = _inputs(tmp_path, files=2)
    job = job_for(tmp_path, fake, src)
    out = tmp_path / "out"
    for part in ("0/2", "1/2"):
        assert run_here(fake, "run", str(job), "--quiet", "--shard", part).returncode == 0
    assert (out / "_SUCCESS").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    fake.reset_records()

    again = run_here(fake, "run", str(job), "--quiet")

    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert fake.requests == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
    assert run_here(None, "verify", str(job)).returncode == 0


def test_last_part_does_not_vouch_for_a_missing_shard_with_success(tmp_path, fake):
    src, _ = _inputs(tmp_path, files=2)
    job = job_for(tmp_path, fake, src)
    out = tmp_path / "out"
    assert run_here(fake, "run", str(job), "--quiet", "--shard", "0/2").returncode == 0
    (lost,) = out.glob("part-00000-*.parquet")
    lost.unlink()  # lost behind part 0's back (a restart, a hand, a bucket rule)

    last = run_here(fake, "run", str(job), "--quiet", "--shard", "1/2")

    assert last.returncode == 1
    assert lost.name in last.stderr and "missing" in last.stderr
    assert not (out / "_SUCCESS").exists()
