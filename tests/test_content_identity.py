"""``input.identity = "content"``: a local input rewritten with the same size and mtime (``cp -p``,
``rsync -a``, ``touch -r``) is read again and its changed rows bought; each file is hashed once per run."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here

TEXTS = make_texts(900, seed=8)


def _inputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ids = [str(i) for i in range(300)]  # text ids, as the CSV beside it holds them
    pq.write_table(pa.table({"id": ids, "text": TEXTS[:300]}), data / "a.parquet")
    _csv(data / "b.csv", {i: TEXTS[i] for i in range(300, 900)})
    return data


def _csv(path, rows: dict[int, str]) -> None:
    with open(path, "w") as fh:
        fh.write("id,text\n")
        fh.writelines(f'{i},"{t}"\n' for i, t in rows.items())


def _job(tmp_path, fake, data, identity: str | None):
    return job_for(
        tmp_path,
        fake,
        data,
        input={"path": str(data), "text": "text", "id": "id", "identity": identity},
        output={"shard_rows": 100},
    )


def _copy_preserving_mtime(staging, path) -> None:
    """What a pipeline that copies with ``cp -p`` / ``rsync -a`` does: new bytes, the old mtime."""
    st = os.stat(path)
    shutil.copyfile(staging, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def _edited(tmp_path, data) -> dict[int, str]:
    want = {i: TEXTS[i] for i in range(900)}
    for i in (310, 555, 899):
        want[i] = TEXTS[i][:-5] + "EDITS"  # the same size
    staging = tmp_path / "staging.csv"
    _csv(staging, {i: want[i] for i in range(300, 900)})
    _copy_preserving_mtime(staging, data / "b.csv")
    return want


def _check(out, want):
    table = read_output(out)
    ids = [int(i) for i in table.column("id").to_pylist()]
    assert sorted(ids) == sorted(want)
    assert_vectors(table.set_column(0, "id", pa.array(ids)), want, 16)


@pytest.mark.parametrize("identity", ["metadata", "content"])
def test_a_copy_that_keeps_the_mtime(tmp_path, fake, identity):
    data = _inputs(tmp_path)
    job = _job(tmp_path, fake, data, identity)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    want = _edited(tmp_path, data)
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    if identity == "metadata":  # what the README warns of: size and mtime say nothing changed
        assert "up to date" in result.stderr and fake.received_texts() == []
        return
    assert sorted(fake.received_texts()) == sorted(want[i] for i in (310, 555, 899))
    _check(tmp_path / "out", want)
    assert run_here(None, "verify", str(job)).returncode == 0
    fake.reset_records()
    again = run_here(fake, "run", str(job), "--quiet")
    assert again.returncode == 0 and "up to date" in again.stderr
    assert not fake.requests and not fake.canary_requests()


def test_each_file_is_hashed_once_per_run_however_many_shards_it_has(tmp_path, fake):
    from batchembed.input import digest

    data = _inputs(tmp_path)
    job = _job(tmp_path, fake, data, "content")
    sizes = sum(p.stat().st_size for p in data.iterdir())
    for _ in range(2):  # the first run (9 shards committed, each after a look at its file) and a no-change one
        digest.MEMO._known.clear()  # a new process starts with none
        before = digest.MEMO.hashed
        assert run_here(fake, "run", str(job), "--quiet").returncode == 0
        assert digest.MEMO.hashed - before == sizes


def test_a_file_rewritten_during_a_content_run_is_not_committed_from_that_read(tmp_path, fake, monkeypatch):
    from batchembed.output import commit

    data = _inputs(tmp_path)
    job = _job(tmp_path, fake, data, "content")
    real = commit.restat
    staging = tmp_path / "staging.csv"
    _csv(staging, {i: TEXTS[i][:-5] + "EDITS" for i in range(300, 900)})

    def rewritten_then_restat(src):
        if src.name == "b.csv" and not staging.with_suffix(".done").exists():
            _copy_preserving_mtime(staging, data / "b.csv")
            staging.with_suffix(".done").touch()
        return real(src)

    monkeypatch.setattr(commit, "restat", rewritten_then_restat)
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 1 and "b.csv changed while this run read it" in result.stderr
