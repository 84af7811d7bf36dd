"""The daily refresh: a rerun over inputs that grew and changed buys only new texts, drops what was
deleted, and leaves a Delta table that shows the previous or the new table, never a mix."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchembed.output.refresh import RETIRE_GRACE
from tests.conftest import assert_vectors, job_for, make_texts, read_output, run_here

SHARD = 100


def _write(path, ids, texts, row_group_size=50):
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _touch_later(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def days(tmp_path):
    """Two daily files of 250 distinct texts each, ids unique across both."""
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(1000, seed=3)
    _write(data / "day0.parquet", list(range(250)), texts[:250])
    _write(data / "day1.parquet", list(range(250, 500)), texts[250:500])
    return data, texts


def _job(tmp_path, fake, data, **output):
    return job_for(
        tmp_path,
        fake,
        data,
        input={"path": str(data / "*.parquet"), "text": "text", "id": "id"},
        limits={"batch_inputs": 25, "concurrency": 4},
        output={"shard_rows": SHARD, **output},
    )


def _expect(table, want: dict[int, str]):
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(want), "every current row exactly once"
    assert_vectors(table, want, 16)


def _age_retired(out, seconds: float) -> None:
    """Make the files a refresh took out of the table look retired ``seconds`` ago (no sleeping)."""
    path = out / "_manifest.json"
    doc = json.loads(path.read_text())
    doc["retired"] = [[name, at - seconds] for name, at in doc["retired"]]
    path.write_text(json.dumps(doc))


def _delta_rows(out) -> pa.Table:
    return DeltaTable(str(out)).to_pyarrow_table()


def test_added_file_is_embedded_alone_and_the_table_grows(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    assert DeltaTable(str(out)).version() == 0
    first = {p.name for p in out.glob("part-*.parquet")}

    _write(data / "day2.parquet", list(range(500, 600)), texts[500:600])
    fake.reset_records()
    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted(texts[500:600])  # only the new file's texts are bought
    assert first <= {p.name for p in out.glob("part-*.parquet")}  # kept shards untouched
    want = dict(enumerate(texts[:600]))
    _expect(read_output(out), want)
    _expect(_delta_rows(out), want)
    report = json.loads((out / "_report.json").read_text())
    files = report["refresh"]["files"]
    assert files["added"] == ["day2.parquet"] and files["unchanged_not_read"] == 2 and not files["changed"]
    assert report["refresh"]["rows"] == {"added": 100, "updated": 0, "removed": 0, "unchanged_read_again": 0}
    assert run_here(None, "verify", str(job)).returncode == 0


def test_changed_rows_are_rebought_and_moved_rows_are_reused(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    v0 = DeltaTable(str(out)).version()

    # day1 rewritten: rows reordered, 10 texts edited, 20 rows deleted, 5 inserted; day0 unchanged
    ids = list(range(250, 500))
    new_texts = dict(zip(ids, texts[250:500], strict=True))
    for i in ids[:10]:
        new_texts[i] = f"edited text number {i}"
    for i in ids[100:120]:
        del new_texts[i]
    for k in range(5):
        new_texts[900 + k] = texts[900 + k]
    order = sorted(new_texts, reverse=True)
    _write(data / "day1.parquet", order, [new_texts[i] for i in order])
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    bought = fake.received_texts()
    fresh = {new_texts[i] for i in ids[:10]} | set(texts[900:905])
    assert sorted(bought) == sorted(fresh)  # moved rows reused from the output, not bought
    want = {**dict(enumerate(texts[:250])), **new_texts}
    _expect(read_output(out), want)  # the table's files are the current table once the run is done
    table = DeltaTable(str(out))
    assert table.version() == v0 + 1
    _expect(table.to_pyarrow_table(), want)
    replaced = set(DeltaTable(str(out), version=v0).file_uris()) - set(table.file_uris())
    assert replaced and all(os.path.exists(p) for p in replaced)  # kept for readers of version v0
    report = json.loads((out / "_report.json").read_text())
    # counted by id: 5 new ids, 10 texts edited, 20 ids gone; the other 220 rows were read again, not bought
    assert report["refresh"]["rows"] == {"added": 5, "updated": 10, "removed": 20, "unchanged_read_again": 220}
    assert report["rows"]["reused_from_output"] == 220 and report["texts"]["bought"] == 15
    assert run_here(None, "verify", str(job)).returncode == 0

    _age_retired(out, seconds=RETIRE_GRACE)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0  # nothing to do: it sweeps
    assert not any(os.path.exists(p) for p in replaced)  # deleted by a later run, once their grace is over
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(os.path.basename(u) for u in table.file_uris())


def test_removed_file_leaves_the_output_and_unchanged_files_are_not_read(tmp_path, fake, days, monkeypatch):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    (data / "day1.parquet").unlink()
    opened = []
    real = pq.ParquetFile.__init__

    def spy(self, source, *a, **k):
        opened.append(str(source))
        return real(self, source, *a, **k)

    monkeypatch.setattr(pq.ParquetFile, "__init__", spy)
    fake.reset_records()
    result = run_here(fake, "run", str(job), "--quiet", "--allow-removal")
    monkeypatch.undo()

    assert result.returncode == 0, result.stderr
    assert not fake.requests and not fake.canary_requests()
    assert not [p for p in opened if "day0" in p]  # the unchanged input is never opened
    out = tmp_path / "out"
    _expect(read_output(out), dict(enumerate(texts[:250])))
    _expect(_delta_rows(out), dict(enumerate(texts[:250])))


def test_refresh_that_removes_most_of_the_output_is_refused(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir())
    _write(data / "day1.parquet", [250], [texts[250]])  # a half-written upstream file
    _write(data / "day0.parquet", [0], [texts[0]])

    refused = run_here(fake, "run", str(job))

    assert refused.returncode == 1
    assert "498 of the output's 500 rows" in refused.stderr and "--allow-removal" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched, _SUCCESS kept
    assert run_here(fake, "run", str(job), "--quiet", "--set", "output.max_removed=1.0").returncode == 0
    _expect(read_output(out), {0: texts[0], 250: texts[250]})


def test_no_change_rerun_sends_nothing_and_reads_nothing(tmp_path, fake, days):
    data, _ = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    version = DeltaTable(str(out)).version()
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0
    assert "up to date" in result.stderr
    assert not fake.requests and not fake.canary_requests()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == mtimes
    assert DeltaTable(str(out)).version() == version


def test_touched_but_identical_file_is_reread_without_buying(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    _touch_later(data / "day0.parquet")
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert fake.received_texts() == []  # every text found in the output
    _expect(read_output(tmp_path / "out"), dict(enumerate(texts[:500])))


def test_duplicate_id_in_a_new_file_is_refused_before_any_request(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    _write(data / "day2.parquet", [600, 7], [texts[600], texts[601]])  # id 7 is in day0
    fake.reset_records()

    refused = run_here(fake, "run", str(job))

    assert refused.returncode == 1
    assert "input.id 7 appears" in refused.stderr or "input.id '7' appears" in refused.stderr
    assert "day2.parquet" in refused.stderr and "day0.parquet" in refused.stderr
    assert not fake.requests and not fake.canary_requests()


def test_history_days_keeps_replaced_files_for_time_travel(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data, history_days=7)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"
    old = {p.name for p in out.glob("part-*.parquet")}
    _write(data / "day1.parquet", [250, 251], ["changed a", "changed b"])

    assert run_here(fake, "run", str(job), "--quiet", "--allow-removal").returncode == 0

    assert old <= {p.name for p in out.glob("part-*.parquet")}  # replaced files kept
    _expect(DeltaTable(str(out), version=0).to_pyarrow_table(), dict(enumerate(texts[:500])))
    _expect(_delta_rows(out), {**dict(enumerate(texts[:250])), 250: "changed a", 251: "changed b"})
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["retired"] and all(time.time() - at < 60 for _, at in manifest["retired"])
    assert run_here(None, "verify", str(job)).returncode == 0


def test_output_of_an_older_version_is_refused_with_what_to_do(tmp_path, fake, days):
    data, _ = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    path = tmp_path / "out" / "_manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = 1
    path.write_text(json.dumps(doc))

    refused = run_here(fake, "run", str(job))

    assert refused.returncode == 1
    assert "older batchembed" in refused.stderr and "--restart" in refused.stderr


def test_plan_and_status_show_the_refresh_before_it_is_spent(tmp_path, fake, days):
    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    done = run_here(None, "status", str(job), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["up_to_date"] is True
    plan = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    assert plan["refresh"]["up_to_date"] and plan["rows"] == 0 and plan["tokens_to_send"] == 0

    _write(data / "day2.parquet", list(range(500, 520)), texts[500:520])
    _write(data / "day1.parquet", list(range(250, 260)), [*texts[250:255], *[f"new {i}" for i in range(5)]])
    status = run_here(None, "status", str(job))
    assert "not up to date: 1 added, 1 changed" in status.stdout
    plan = json.loads(run_here(None, "plan", str(job), "--json").stdout)
    refresh = plan["refresh"]
    assert refresh["added"] == ["day2.parquet"] and refresh["changed"] == ["day1.parquet"]
    assert refresh["unchanged"] == ["day0.parquet"]
    # by id: day2's 20 rows are new, 5 of day1's texts changed, 240 of its ids left, 5 are as they were
    assert refresh["rows"] == {"added": 20, "updated": 5, "removed": 240, "unchanged_read_again": 5}
    assert refresh["rows_reused"] == 5  # five of day1's texts are already in the output
    assert plan["rows"] == 30 and plan["unique_texts"] == 25  # texts to buy: 20 new rows, 5 edited texts
    text = run_here(None, "plan", str(job)).stdout
    assert "files added      1: day2.parquet\n" in text and "rows reused      5" in text

    fake.reset_records()
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert len(fake.received_texts()) == 25  # what the plan said: 20 new rows + 5 edited texts
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["refresh"]["rows"] == refresh["rows"]  # and the run counts the rows as the plan did


def test_a_run_reads_the_manifest_once_at_its_start(tmp_path, fake, days, monkeypatch):
    from batchembed.output.store.local import LocalStore

    data, texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    reads = []
    real_read = LocalStore.read_manifest

    def counted(self):
        reads.append(self.manifest_name)
        return real_read(self)

    monkeypatch.setattr(LocalStore, "read_manifest", counted)
    _write(data / "day2.parquet", list(range(500, 600)), texts[500:600])
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert reads.count("_manifest.json") == 1  # before the lock, for the known rows; `open` reuses it
    reads.clear()
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0  # nothing changed
    assert reads.count("_manifest.json") == 1


def test_a_manifest_replaced_between_the_first_read_and_the_lock_is_read_again(tmp_path, fake, days, monkeypatch):
    from batchembed.output.commit import JobOutput
    from batchembed.output.store.local import LocalStore

    data, _texts = days
    job = _job(tmp_path, fake, data)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    manifest = tmp_path / "out" / "_manifest.json"
    doc = json.loads(manifest.read_text())
    real_acquire = JobOutput.acquire

    def another_writer_first(self, restart):
        real_acquire(self, restart)
        doc["created"] = "replaced by another run"  # a run that committed between our first read and our lock
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(manifest)

    reads = []
    real_read = LocalStore.read_manifest
    monkeypatch.setattr(LocalStore, "read_manifest", lambda self: reads.append(1) or real_read(self))
    monkeypatch.setattr(JobOutput, "acquire", another_writer_first)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert len(reads) == 2  # the stamp changed: `open` read the manifest again
    assert json.loads(manifest.read_text())["created"] == "replaced by another run"
