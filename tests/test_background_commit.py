"""A unit's commit (the end of its upload, its manifest entry) runs while the next unit is written, one
commit at a time, in unit order: what was slow on object stores leaves the writer's critical path."""

from __future__ import annotations

import json
import threading

from batchembed.output import commit as output_module
from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here, write_parquet


def test_next_unit_is_written_while_a_commit_is_in_flight_and_commits_stay_in_order(tmp_path, fake, monkeypatch):
    texts = make_texts(1000, seed=9)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, output={"shard_rows": 200})  # units part-00000 ... part-00004
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    next_unit_written = threading.Event()
    write, commit = output_module.UnitWriter.write, output_module.JobOutput.commit

    def recorded_write(self, rows, failed, cut):
        with lock:
            events.append(("write", self.unit.name))
        if self.unit.name == "part-00001.parquet":
            next_unit_written.set()
        return write(self, rows, failed, cut)

    def slow_commit(self, writer):
        with lock:
            events.append(("commit", writer.unit.name))
        if writer.unit.name == "part-00000.parquet":
            # an upload still completing: the writer goes on with the next unit meanwhile
            next_unit_written.wait()  # a writer that waited for this commit would hang here
        record = commit(self, writer)
        with lock:
            events.append(("committed", writer.unit.name))
        return record

    monkeypatch.setattr(output_module.UnitWriter, "write", recorded_write)
    monkeypatch.setattr(output_module.JobOutput, "commit", slow_commit)

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert next_unit_written.is_set()
    assert events.index(("write", "part-00001.parquet")) < events.index(("committed", "part-00000.parquet"))
    commits = [(kind, name) for kind, name in events if kind != "write"]
    names = [f"part-{i:05d}.parquet" for i in range(5)]
    # one commit at a time, in unit order
    assert commits == [(kind, name) for name in names for kind in ("commit", "committed")]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [s["unit"] + ".parquet" for s in manifest["shards"]] == names
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(1000))
    assert_vectors(table, dict(enumerate(texts)), 16)
