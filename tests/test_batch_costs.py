"""What the batch tier costs beyond the batches: a ``run --no-wait`` poll checks the open batches and reads
no input (a pipeline polling every 10 minutes does not read and hash every row each time), and a batch's
output file is read in pieces, never whole (50,000 float vectors of 1,536 dimensions are 1.5 GB of JSON)."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from batchembed.providers.transport import DOWNLOAD_BLOCK
from batchembed.run.batch import ledger as ledger_module
from batchembed.run.batch import loop as batch_loop
from batchembed.run.batch.answers import BatchResults
from batchembed.run.batch.client import BatchClient
from batchembed.run.batch.shapes import shape_for
from batchembed.testing.batchapi import FakeBatchProvider, FakeBatchServer
from tests.conftest import assert_vectors, make_texts, read_output, run_here, write_parquet
from tests.test_batch_tier import ENV, batch_job


class Blanked:
    """An input file whose bytes are zeroed in place, its size and mtime kept: its identity (what a run
    compares to know whether it changed) is the same, but any read of it finds no Parquet at all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.times = (path.stat().st_atime_ns, path.stat().st_mtime_ns)

    def blank(self) -> None:
        self.path.write_bytes(b"\0" * len(self.data))
        os.utime(self.path, ns=self.times)

    def restore(self) -> None:
        self.path.write_bytes(self.data)
        os.utime(self.path, ns=self.times)


def _status_polls(fake: FakeBatchProvider, ids: list[str]) -> list[tuple[str, str]]:
    return [("GET", f"/batches/{i}") for i in ids]


def test_a_no_wait_poll_reads_no_input_and_sends_only_the_batches_status_requests(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(400)
    job = batch_job(tmp_path, fake, texts)  # 400 rows: two units of 200, four batches of at most 120 inputs
    fake.hold_batches = True
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    batches = [c["id"] for c in fake.created]
    assert len(batches) == 4
    source = Blanked(tmp_path / "in.parquet")

    source.blank()
    fake.batch_calls.clear()
    poll = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert poll.returncode == 75, poll.stderr
    assert fake.batch_calls == _status_polls(fake, batches)  # one GET per open batch, nothing else
    assert fake.requests == []  # and nothing online

    # the first unit's batches end: writing it needs the input again
    source.restore()
    fake.finish_all(batches[:2])
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    assert read_output(tmp_path / "out").column("id").to_pylist() == list(range(200))

    source.blank()  # the batches left are still running: polling them reads no input either
    fake.batch_calls.clear()
    poll = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert poll.returncode == 75, poll.stderr
    assert fake.batch_calls == _status_polls(fake, batches[2:])

    source.restore()
    fake.finish_all()
    done = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)
    assert done.returncode == 0, done.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert sorted(fake.billed_texts) == sorted(texts)
    assert run_here(None, "verify", str(job), env=ENV).returncode == 0


def test_a_poll_after_the_inputs_changed_plans_the_new_rows(tmp_path):
    fake = FakeBatchProvider(dim=16)
    texts = make_texts(100)
    job = batch_job(tmp_path, fake, texts)
    fake.hold_batches = True
    assert run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV).returncode == 75
    assert len(fake.created) == 1
    more = make_texts(50, seed=5)
    write_parquet(tmp_path / "in.parquet", texts + more)  # the same file, grown: its identity changed

    poll = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=ENV)

    assert poll.returncode == 75, poll.stderr
    assert len(fake.created) == 2  # the new rows' batch; the first one is not bought again
    fake.hold_batches = False
    done = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert done.returncode == 0, done.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts + more)), 16)
    assert sorted(fake.billed_texts) == sorted(set(texts + more))


# ------------------------------------------------------------------------------- a large output file


class SpyFile:
    """A binary file that records how it is read and written (the sizes of each call)."""

    def __init__(self, file) -> None:
        self.file = file
        self.writes: list[int] = []
        self.lines: list[int] = []  # what each readline returned
        self.whole_reads = 0  # read() of everything left
        self.size = file.seek(0, os.SEEK_END)  # what it holds (then read from the start)
        file.seek(0)

    def write(self, data) -> int:
        self.writes.append(len(data))
        return self.file.write(data)

    def readline(self, size: int = -1) -> bytes:
        line = self.file.readline(size)
        self.lines.append(len(line))
        return line

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            self.whole_reads += 1
        return self.file.read(size)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_batch_output_file_is_read_a_line_at_a_time_and_its_answers_a_row_group_at_a_time(tmp_path, monkeypatch):
    fake = FakeBatchProvider(dim=256)
    texts = make_texts(1500)
    # one batch of 1,500 inputs in 47 lines of 32: an output file of about 5 MB of float JSON
    job = batch_job(tmp_path, fake, texts, batch_inputs=2000)
    monkeypatch.setattr(ledger_module, "RESULT_ROWS", 100)  # a results file of 15 row groups
    seen: list[SpyFile] = []
    real_collect = batch_loop.collect

    def spying(items, sent, files, why):
        spies = [SpyFile(f) for f in files]
        seen.extend(spies)
        return real_collect(items, sent, spies, why)

    monkeypatch.setattr(batch_loop, "collect", spying)
    groups: list[int] = []
    real_answer = BatchResults.answer

    def answer(self, at, row):
        got = real_answer(self, at, row)
        groups.append(self.groups_read)
        return got

    monkeypatch.setattr(BatchResults, "answer", answer)

    r = run_here(fake, "run", str(job), "--quiet", env=ENV)

    assert r.returncode == 0, r.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 256)
    output, errors = seen
    size = output.size
    assert size > 4 * DOWNLOAD_BLOCK
    assert output.whole_reads == 0 and errors.whole_reads == 0
    assert len(output.lines) == 47 + 1  # one readline per line of the file (and the end)
    assert max(output.lines) < size / 40  # never more than a line at a time
    # the 15 row groups (more than are ever kept at once) each read once, in the order the writer needs them
    assert len(groups) == 1500 and groups[-1] == 15


def test_an_output_file_is_downloaded_in_blocks_as_it_arrives():
    data = b"".join(b'{"custom_id": "L%d", "padding": "%s"}\n' % (i, b"x" * 1000) for i in range(5000))
    with FakeBatchServer(dim=8) as srv:
        file_id = srv._store(data)
        client = BatchClient(shape_for("openai", "fake", False, {}), srv.url, None, timeout=60, max_retries=0)
        sink = SpyFile(io.BytesIO())

        async def download() -> None:
            try:
                await client.download(file_id, sink)
            finally:
                await client.aclose()

        asyncio.run(download())

    assert sink.file.getvalue() == data
    assert len(sink.writes) > 1 and max(sink.writes) <= DOWNLOAD_BLOCK  # over real HTTP, never held whole
