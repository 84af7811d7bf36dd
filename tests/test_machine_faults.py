"""The machine's faults end in one line naming the path, the cause and what to do (exit 1), keep
everything committed, and the next run resumes exactly once."""

from __future__ import annotations

import errno
import os
import pathlib

import pytest

from batchembed import cli
from batchembed.fs.location import locate
from batchembed.output import layout
from batchembed.output import manifest as checkpoint
from batchembed.output.store.local import LocalStore
from tests.conftest import (
    assert_vectors,
    cli_env,
    job_for,
    make_texts,
    message_lines,
    read_output,
    run_cli,
    run_here,
    write_job,
    write_parquet,
)

N = 600


@pytest.fixture
def dataset(tmp_path):
    texts = make_texts(N, seed=3)
    return texts, write_parquet(tmp_path / "in.parquet", texts, row_group_size=100)


def _one_line(stderr: str) -> str:
    lines = message_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _fails_in_one_line(job, fake, monkeypatch, capsys, target, name: str, fault) -> str:
    """Run the job in this process with ``target.name`` replaced by ``fault``: it must exit 1 with a
    single line on stderr, returned. The fault is gone again afterwards."""
    with monkeypatch.context() as patch:
        patch.setattr(target, name, fault)
        assert cli.main(["run", str(job), "--quiet"], transport=fake.transport()) == 1
    return _one_line(capsys.readouterr().err)


def _resume_completes(tmp_path, job, texts, fake):
    """The next run succeeds and the output is complete, exactly once, and verifies; its result."""
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(N))
    assert_vectors(table, dict(enumerate(texts)), 16)
    verify = run_here(fake, "verify", str(job))
    assert verify.returncode == 0, verify.stdout
    return result


def test_output_path_under_a_regular_file(tmp_path, fake, dataset):
    _, src = dataset
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory is expected")
    job = job_for(tmp_path, fake, src, output={"path": str(blocker / "out")})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert str(blocker / "out") in line and "is a regular file, not a directory" in line
    assert fake.requests == []


def test_disk_full_while_writing_a_shard_keeps_what_is_committed_and_resumes(tmp_path, fake, dataset, monkeypatch):
    texts, src = dataset
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("batchembed.output.commit.new_attempt", lambda: "0000dead")
    # a real ENOSPC: the third shard's temporary file is /dev/full, which refuses every write
    os.symlink("/dev/full", out / "part-00002-0000dead.parquet.tmp")
    job = job_for(tmp_path, fake, src, limits={"concurrency": 1}, output={"shard_rows": 100})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 1, result.stderr
    line = _one_line(result.stderr)
    assert f"{out}: the disk is full" in line and "run the same command again to resume" in line
    manifest = checkpoint.Manifest.load(LocalStore(locate(str(out))))
    assert [s.name for s in manifest.shards] == ["part-00000-0000dead.parquet", "part-00001-0000dead.parquet"]

    monkeypatch.undo()
    again = _resume_completes(tmp_path, job, texts, fake)
    assert "resuming" in again.stderr


def test_disk_full_while_recording_a_commit(tmp_path, fake, dataset, monkeypatch, capsys):
    texts, src = dataset
    job = job_for(tmp_path, fake, src, limits={"concurrency": 1}, output={"shard_rows": 100})
    real_commit = checkpoint.Manifest.commit

    def commit(self, store, record, resolves):
        if len(self.shards) == 2:  # the third commit finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), store.describe(layout.COMMITS))
        real_commit(self, store, record, resolves)

    line = _fails_in_one_line(job, fake, monkeypatch, capsys, checkpoint.Manifest, "commit", commit)
    assert f"{layout.COMMITS}: the disk is full" in line

    result = _resume_completes(tmp_path, job, texts, fake)
    assert "2 shards (200 rows) already committed" in result.stderr


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EACCES, "permission denied: make it writable"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_unwritable_output_is_one_clear_line(tmp_path, fake, dataset, monkeypatch, capsys, code, says):
    # root ignores file modes and this machine cannot mount: the fault is injected where mkdir fails
    _, src = dataset
    job = job_for(tmp_path, fake, src)
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "out":
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    line = _fails_in_one_line(job, fake, monkeypatch, capsys, pathlib.Path, "mkdir", mkdir)
    assert line.startswith(f"batchembed: error: {tmp_path / 'out'}: {says}")


# -------------------------------------------------------------------------------------------- API keys


def test_an_openai_compatible_server_needs_no_key(tmp_path, fake, dataset):
    """No key named by the job: none required, and no other provider's key is sent along."""
    _, src = dataset
    job = job_for(tmp_path, fake, src)
    env = cli_env(OPENAI_API_KEY="sk-not-for-this-server", FIREWORKS_API_KEY="fw-not-for-this-server")
    result = run_here(fake, "run", str(job), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert fake.requests and all("authorization" not in r.headers for r in fake.requests)


def test_a_key_the_job_names_is_required(tmp_path, fake, dataset):
    _, src = dataset
    job = job_for(tmp_path, fake, src, model={"api_key_env": "MY_SERVER_KEY"})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 1
    assert "MY_SERVER_KEY is not set" in result.stderr


def test_the_hosted_api_still_needs_its_key(tmp_path, dataset):
    _, src = dataset
    job = write_job(
        tmp_path / "job.toml",
        {"input": {"path": str(src)}, "model": {"provider": "fireworks"}, "output": {"path": str(tmp_path / "o")}},
    )
    result = run_cli("run", str(job), "--quiet")
    assert result.returncode == 1
    assert "FIREWORKS_API_KEY is not set" in result.stderr


def test_full_disk_under_the_vector_cache(tmp_path, fake, dataset, monkeypatch, capsys):
    """A real SQLITE_FULL (the cache file may not grow past a few pages) is one line naming cache.path."""
    from batchembed.tasks import memo

    texts, src = dataset
    cache = tmp_path / "cache.sqlite"
    job = job_for(tmp_path, fake, src, cache={"path": str(cache)}, output={"shard_rows": 100})
    real_connect = memo.sqlite3.connect

    def connect(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        db.execute("PRAGMA max_page_count = 8")
        return db

    line = _fails_in_one_line(job, fake, monkeypatch, capsys, memo.sqlite3, "connect", connect)
    assert f"{cache} (cache.path): the disk is full" in line

    _resume_completes(tmp_path, job, texts, fake)
