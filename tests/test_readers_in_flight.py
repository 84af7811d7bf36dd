"""Delta readers in flight during a refresh never fail at default settings: a file a publish takes out of
the table stays until a later run, at least ``RETIRE_GRACE`` after, so a reader that opened the previous
version reads it whole. A reader thread loops over the table while a real ``batchembed`` process refreshes
it; everything is synchronised on the fake server's counters and on events, never on sleeps."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from batchembed.output.refresh import RETIRE_GRACE
from tests.conftest import hold_mid_run, job_for, make_texts, run_here

ROWS = 200


class LoopReader:
    """Reads the table's current version again and again (its file list, then every file), counting failures."""

    def __init__(self, out) -> None:
        self.out = str(out)
        self.reads = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                uris = DeltaTable(self.out).file_uris()
                rows = sum(pq.read_table(u, columns=["id"]).num_rows for u in uris)
                assert rows == 3 * ROWS, rows
            except Exception as exc:  # what a reader of the table would see fail
                self.failures.append(repr(exc))
            with self.progress:
                self.reads += 1
                self.progress.notify_all()

    def wait_for(self, more: int) -> None:
        """Block until the reader has finished ``more`` further reads."""
        with self.progress:
            target = self.reads + more
            assert self.progress.wait_for(lambda: self.reads >= target, timeout=120)


def test_readers_of_the_previous_version_never_fail_during_a_refresh(tmp_path, srv):
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(3 * ROWS, seed=21)
    for f in range(3):
        ids = list(range(f * ROWS, (f + 1) * ROWS))
        pq.write_table(pa.table({"id": ids, "text": texts[f * ROWS : (f + 1) * ROWS]}), data / f"f{f}.parquet")
    job = job_for(tmp_path, srv, data, limits={"batch_inputs": 10, "concurrency": 2}, output={"shard_rows": 50})
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    opened_before = DeltaTable(str(out)).file_uris()  # a reader opens version 0, reads it later
    reader = LoopReader(out)
    reader.thread.start()
    reader.wait_for(1)
    edited = pq.read_table(data / "f1.parquet")
    new_texts = [f"day two {i}" for i in range(ROWS)]
    pq.write_table(edited.set_column(1, "text", pa.array(new_texts)), data / "f1.parquet")

    refresh = hold_mid_run(srv, job, 1)  # a real process, its answers held after its first request
    reader.wait_for(2)  # reads while the refresh is under way
    srv.release()
    assert refresh.wait(timeout=180) == 0, refresh.stderr.read()
    reader.wait_for(2)  # and after it published the new version
    reader.stop.set()
    reader.thread.join(timeout=60)

    assert reader.failures == [] and reader.reads >= 5
    old = pa.concat_tables(pq.read_table(u, columns=["id", "embedding"]) for u in opened_before)
    assert sorted(old.column("id").to_pylist()) == list(range(3 * ROWS))  # version 0, whole, after the publish
    current = DeltaTable(str(out)).file_uris()
    assert not set(opened_before) <= set(current)
    glob = pa.concat_tables(pq.read_table(p, columns=["id"]) for p in sorted(out.glob("part-*.parquet")))
    assert glob.num_rows == 4 * ROWS  # a plain glob sees the replaced files too until a later run deletes them

    doc = json.loads((out / "_manifest.json").read_text())  # a later run, once the grace is over
    doc["retired"] = [[name, at - RETIRE_GRACE] for name, at in doc["retired"]]
    (out / "_manifest.json").write_text(json.dumps(doc))
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    glob = pa.concat_tables(pq.read_table(p, columns=["id"]) for p in sorted(out.glob("part-*.parquet")))
    assert sorted(glob.column("id").to_pylist()) == list(range(3 * ROWS))
    assert run_here(None, "verify", str(job)).returncode == 0
