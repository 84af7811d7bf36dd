"""The output's Delta table is shared: others compact, Z-order, vacuum and append to it between runs, and
its log can be lost or damaged. A rerun either leaves a table that equals the inputs (taking in what
others did without changing a row) or stops before buying anything, with one sentence saying what to do;
it never deletes a file it did not write. Through the real CLI, against real delta-rs maintenance."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.conftest import ROOT, assert_vectors, job_for, make_texts, run_here

ROWS = 200  # per input file; three files, shards of 100 rows: six shards


@pytest.fixture
def daily(tmp_path, fake):
    """Three Parquet inputs of ROWS rows (ids unique across them), a job, and its output after a first run."""
    data = tmp_path / "data"
    data.mkdir()
    texts = make_texts(3 * ROWS, seed=11)
    for f in range(3):
        ids = list(range(f * ROWS, (f + 1) * ROWS))
        pq.write_table(pa.table({"id": ids, "text": texts[f * ROWS : (f + 1) * ROWS]}), data / f"f{f}.parquet")
    job = job_for(tmp_path, fake, data, limits={"batch_inputs": 25}, output={"shard_rows": 100})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    fake.reset_records()
    return data, job, tmp_path / "out", dict(enumerate(texts))


def _table(out) -> pa.Table:
    """The table's current version, read the way the README recommends (the file list and a Parquet reader);
    vectors as ``fixed_size_list`` (a compacted file holds them as variable lists)."""
    vector = pa.list_(pa.float32(), 16)
    parts = []
    for uri in DeltaTable(str(out)).file_uris():
        t = pq.read_table(uri, columns=["id", "embedding"])
        parts.append(pa.table({"id": t.column("id"), "embedding": pc.cast(t.column("embedding"), vector)}))
    return pa.concat_tables(parts)


def _expect(out, want: dict[int, str]) -> None:
    table = _table(out)
    assert sorted(table.column("id").to_pylist()) == sorted(want), "every current row exactly once"
    assert_vectors(table, want, 16)


def _edit(data, name: str, row: int, text: str) -> None:
    table = pq.read_table(data / name)
    texts = table.column("text").to_pylist()
    texts[row] = text
    pq.write_table(table.set_column(1, "text", pa.array(texts)), data / name)


def _foreign(out) -> set[str]:
    """Data files in the output that batchembed did not write (delta-rs names them part-N-<uuid>-c000...)."""
    return {p.name for p in out.glob("part-*-c000*.parquet")}


def _vacuum(out) -> None:
    DeltaTable(str(out)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


@pytest.mark.parametrize("maintenance", ["compact", "z_order", "compact+vacuum"])
def test_maintenance_by_others_is_taken_in_and_a_refresh_buys_only_new_texts(daily, fake, maintenance):
    data, job, out, want = daily
    table = DeltaTable(str(out))
    if maintenance == "z_order":
        table.optimize.z_order(["id"])
    else:
        table.optimize.compact()
    if "vacuum" in maintenance:
        _vacuum(out)  # the compacted files are now the only copy of the vectors
    compacted = _foreign(out)
    assert compacted
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] and status["damaged"] == [] and "maintained by others" in status["table"]
    plan = run_here(None, "plan", str(job))
    assert plan.returncode == 0 and "a run takes it in, rows kept" in plan.stdout

    again = run_here(fake, "run", str(job), "--quiet")  # nothing changed in the inputs

    assert again.returncode == 0, again.stderr
    assert "taken in, its rows kept" in again.stderr and "up to date" in again.stderr
    assert not fake.requests and not fake.canary_requests()
    assert _foreign(out) == compacted  # never deleted: batchembed did not write them
    _expect(out, want)
    assert run_here(None, "verify", str(job)).returncode == 0

    _edit(data, "f1.parquet", 5, "an edited text on day two")
    want[ROWS + 5] = "an edited text on day two"
    refresh = run_here(fake, "run", str(job), "--quiet")

    assert refresh.returncode == 0, refresh.stderr
    assert fake.received_texts() == ["an edited text on day two"]  # the others' vectors come from the compacted files
    figures = json.loads((out / "_report.json").read_text())["refresh"]["rows"]
    assert figures["added"] == figures["removed"] == 0 and figures["updated"] == 1  # by id, compacted or not
    _expect(out, want)
    assert _foreign(out) == compacted  # out of the table now, but never deleted by batchembed
    assert not set(DeltaTable(str(out)).file_uris()) & {str(out / n) for n in compacted}
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout


def test_an_append_by_others_is_refused_before_buying_until_the_table_is_rebuilt(daily, fake):
    data, job, out, want = daily
    stranger = pa.table({"id": pa.array([9999], pa.int64())})
    extra = DeltaTable(str(out)).to_pyarrow_dataset().to_table(filter=pc.field("id") == 0)
    write_deltalake(str(out), extra.set_column(0, "id", stranger.column(0)), mode="append")
    appended = _foreign(out)
    _edit(data, "f0.parquet", 0, "a text that would be bought")

    refused = run_here(fake, "run", str(job), "--quiet")

    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()  # one sentence: what is wrong, what to do
    assert "another writer changed its rows at version 1 (WRITE: 1 file added)" in line
    assert "--rebuild-table" in line and "nothing was bought" in line
    assert not fake.requests and not fake.canary_requests()
    plan = run_here(None, "plan", str(job))
    assert plan.returncode == 1 and "refused: " in plan.stdout and "another writer changed its rows" in plan.stdout
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 1 and "another writer changed its rows" in verify.stdout

    rebuilt = run_here(fake, "run", str(job), "--quiet", "--rebuild-table")

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt the Delta table from the manifest" in rebuilt.stderr
    assert fake.received_texts() == ["a text that would be bought"]
    want[0] = "a text that would be bought"
    _expect(out, want)
    assert _foreign(out) == appended  # out of the table, still on disk: batchembed deletes only its own files
    assert run_here(None, "verify", str(job)).returncode == 0


def test_a_missing_delta_log_is_rebuilt_from_the_manifest(daily, fake):
    _data, job, out, want = daily
    shutil.rmtree(out / "_delta_log")
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 1 and "the Delta log (_delta_log/) is missing" in verify.stdout
    plan = run_here(None, "plan", str(job))
    assert plan.returncode == 0 and "a run rebuilds the Delta table from the manifest" in plan.stdout

    rerun = run_here(fake, "run", str(job), "--quiet")

    assert rerun.returncode == 0, rerun.stderr
    assert "rebuilt the Delta table from the manifest (version 0)" in rerun.stderr
    assert not fake.requests and not fake.canary_requests()
    _expect(out, want)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_a_deleted_last_commit_is_published_again(daily, fake):
    data, job, out, want = daily
    _edit(data, "f2.parquet", 7, "day two text")
    want[2 * ROWS + 7] = "day two text"
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    (out / "_delta_log" / f"{1:020d}.json").unlink()  # the refresh's commit is lost: version 0 again
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 1 and "the Delta log ends at version 0" in verify.stdout
    fake.reset_records()

    rerun = run_here(fake, "run", str(job), "--quiet")

    assert rerun.returncode == 0, rerun.stderr
    assert "rebuilt the Delta table from the manifest (version 1)" in rerun.stderr
    assert not fake.requests
    _expect(out, want)
    assert run_here(None, "verify", str(job)).returncode == 0


@pytest.mark.parametrize("cut", ["mid-line", "at a line end"])
def test_a_truncated_last_commit_is_named_before_anything_is_bought(daily, fake, cut):
    data, job, out, want = daily
    last = out / "_delta_log" / f"{0:020d}.json"
    raw = last.read_bytes()
    last.write_bytes(raw[: len(raw) // 2] if cut == "mid-line" else raw[: raw.rindex(b"\n") + 1])
    _edit(data, "f0.parquet", 3, "would be bought first before")

    refused = run_here(fake, "run", str(job), "--quiet")

    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert str(last) in line and "--rebuild-table" in line and "<unknown>" not in line
    assert not fake.requests and not fake.canary_requests()
    assert run_here(None, "plan", str(job)).returncode == 1
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 1 and str(last) in verify.stdout
    (data / "f0.parquet").unlink()  # a no-change rerun is refused too, never "up to date"
    pq.write_table(pa.table({"id": list(range(ROWS)), "text": [want[i] for i in range(ROWS)]}), data / "f0.parquet")
    assert run_here(fake, "run", str(job), "--quiet").returncode == 1

    rebuilt = run_here(fake, "run", str(job), "--quiet", "--rebuild-table")

    assert rebuilt.returncode == 0, rebuilt.stderr
    _expect(out, want)
    assert DeltaTable(str(out)).version() in (0, 1)  # a new log: its history is gone
    assert run_here(None, "verify", str(job)).returncode == 0


def test_restart_deletes_only_the_files_batchembed_wrote(daily, fake):
    _data, job, out, want = daily
    DeltaTable(str(out)).optimize.compact()
    compacted = _foreign(out)

    assert run_here(fake, "run", str(job), "--quiet", "--restart").returncode == 0

    assert _foreign(out) == compacted
    _expect(out, want)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["adopted"] == []


def test_the_readme_maintenance_recipe_is_taken_in(daily, fake):
    _data, job, out, want = daily
    text = (ROOT / "README.md").read_text()
    section = text.split("## The table is shared: what others may run on it", 1)[1].split("\n## ", 1)[0]
    (recipe,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(recipe, {"out": str(out)})

    again = run_here(fake, "run", str(job), "--quiet")

    assert again.returncode == 0 and "taken in, its rows kept" in again.stderr
    assert not fake.requests
    _expect(out, want)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_an_append_undone_by_a_restore_is_taken_in(daily, fake):
    _data, job, out, want = daily
    row = DeltaTable(str(out)).to_pyarrow_dataset().to_table(filter=pc.field("id") == 0)
    write_deltalake(str(out), row, mode="append")
    assert run_here(fake, "run", str(job), "--quiet").returncode == 1  # refused while the append is there
    DeltaTable(str(out)).restore(0)  # what the refusal says to do

    again = run_here(fake, "run", str(job), "--quiet")

    assert again.returncode == 0, again.stderr
    assert "undone" in again.stderr and not fake.requests
    _expect(out, want)
    assert run_here(None, "verify", str(job)).returncode == 0
