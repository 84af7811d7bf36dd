"""One growing export (CSV or JSON Lines) refreshed every day: an append is read from where the file was
and buys only its new rows, a touch costs no request, a rewrite or a truncation is compared by rows (the
removal guard counts ids that left), and a SIGKILL during such a refresh changes nothing of that."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from batchembed.input import chunks as input_chunks
from batchembed.input.files import SourceFile
from tests.conftest import (
    ROOT,
    assert_vectors,
    cli_env,
    job_for,
    kill_mid_run,
    make_texts,
    read_output,
    run_here,
    write_job,
)

TEXTS = make_texts(4000, seed=27)


def _line(fmt: str, i: int, text: str | None = None) -> str:
    text = TEXTS[i] if text is None else text
    if fmt == "csv":
        return f'{i},"{text}"\n'
    return json.dumps({"id": i, "text": text}) + "\n"


def _write(path, fmt: str, ids, texts: dict[int, str] | None = None, mode: str = "w") -> None:
    with open(path, mode, newline="") as fh:
        if mode == "w" and fmt == "csv":
            fh.write("id,text\n")
        fh.writelines(_line(fmt, i, (texts or {}).get(i)) for i in ids)


def _job(tmp_path, fake, path, **output):
    return job_for(
        tmp_path,
        fake,
        path,
        input={"path": str(path), "text": "text", "id": "id"},
        limits={"batch_inputs": 25, "concurrency": 4},
        output=output,
    )


def _expect(out, want: dict[int, str]) -> None:
    for table in (read_output(out), DeltaTable(str(out)).to_pyarrow_table()):
        ids = [int(i) for i in table.column("id").to_pylist()]
        assert sorted(ids) == sorted(want), "every current row exactly once"
        assert_vectors(table.set_column(0, "id", table.column("id").cast("int64")), want, 16)


@pytest.fixture
def reads(monkeypatch):
    """Where each input file's data is read from: [(file, first row, byte offset)] of every reading."""
    seen: list[tuple[str, int, int]] = []
    real = input_chunks.iter_batches

    def spy(src: SourceFile, columns, start_row=0, batch_rows=8192):
        where = src.reading_from(start_row)[1] if hasattr(src, "reading_from") else 0
        seen.append((src.name, start_row, where))
        return real(src, columns, start_row, batch_rows)

    monkeypatch.setattr(input_chunks, "iter_batches", spy)
    return seen


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("shard_rows", [100_000, 100], ids=["packed", "ranges"])
def test_rows_appended_are_read_from_where_the_file_was_and_only_they_are_bought(
    tmp_path, fake, reads, fmt, shard_rows
):
    path = tmp_path / f"export.{fmt}"
    _write(path, fmt, range(300))
    job = _job(tmp_path, fake, path, shard_rows=shard_rows)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    size = path.stat().st_size
    _write(path, fmt, range(300, 305), mode="a")  # the export grew by 5 rows
    fake.reset_records()
    reads.clear()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted(TEXTS[300:305])
    assert reads == [(path.name, 300, size)]  # the 300 rows held are not read again, not even skipped
    out = tmp_path / "out"
    _expect(out, {i: TEXTS[i] for i in range(305)})
    assert run_here(None, "verify", str(job)).returncode == 0
    fake.reset_records()
    again = run_here(fake, "run", str(job), "--quiet")
    assert again.returncode == 0 and "up to date" in again.stderr
    assert not fake.requests and not fake.canary_requests()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_touch_costs_no_request_and_one_read_then_nothing(tmp_path, fake, monkeypatch, fmt):
    from batchembed.input import digest

    path = tmp_path / f"export.{fmt}"
    _write(path, fmt, range(300))
    job = _job(tmp_path, fake, path)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    fake.reset_records()
    hashed = []
    real = digest._chain
    monkeypatch.setattr(digest, "_chain", lambda fh, cuts, *a: hashed.append(cuts) or real(fh, cuts, *a))

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr
    assert not fake.requests and not fake.canary_requests()  # no request at all, not even the canary
    assert hashed == [[st.st_size]]  # one read to prove its bytes unchanged
    recorded = json.loads((tmp_path / "out" / "_manifest.json").read_text())["shards"][0]["inputs"][path.name]
    assert recorded["mtime_ns"] == st.st_mtime_ns + 5_000_000_000  # the new identity is recorded
    hashed.clear()
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert hashed == [] and not fake.requests and not fake.canary_requests()  # the next run costs nothing
    _expect(tmp_path / "out", {i: TEXTS[i] for i in range(300)})


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("grows", [False, True], ids=["same-size", "and-appended"])
def test_a_row_rewritten_in_the_middle_is_bought_again_and_nothing_else(tmp_path, fake, fmt, grows):
    path = tmp_path / f"export.{fmt}"
    _write(path, fmt, range(300))
    job = _job(tmp_path, fake, path, shard_rows=100)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    edited = TEXTS[150][:-4] + "EDIT"  # the same byte length: only the content tells
    ids = range(305) if grows else range(300)
    want = {i: TEXTS[i] for i in ids} | {150: edited}
    _write(path, fmt, ids, {150: edited})
    fake.reset_records()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == sorted([edited, *TEXTS[300:305]] if grows else [edited])
    _expect(tmp_path / "out", want)
    assert run_here(None, "verify", str(job)).returncode == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_truncated_export_is_compared_by_its_rows(tmp_path, fake, fmt):
    path = tmp_path / f"export.{fmt}"
    _write(path, fmt, range(300))
    job = _job(tmp_path, fake, path, shard_rows=100)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    out = tmp_path / "out"

    _write(path, fmt, range(290))  # 10 rows gone: within the guard
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _expect(out, {i: TEXTS[i] for i in range(290)})

    _write(path, fmt, range(100))  # a half-written export: 190 of 290 ids leave
    before = sorted(p.name for p in out.iterdir())
    refused = run_here(fake, "run", str(job), "--quiet")
    assert refused.returncode == 1
    assert "no longer hold 190 of the output's 290 rows" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    fake.reset_records()
    assert run_here(fake, "run", str(job), "--quiet", "--allow-removal").returncode == 0
    assert fake.received_texts() == []
    _expect(out, {i: TEXTS[i] for i in range(100)})


def test_ids_that_left_are_counted_not_the_rows_of_a_changed_file(tmp_path, fake):
    path = tmp_path / "export.csv"
    _write(path, "csv", range(300))
    job = _job(tmp_path, fake, path)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    # reordered and rewritten whole, 5 rows added: every id is still there
    _write(path, "csv", [*range(304, 299, -1), *range(299, -1, -1)])
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    # the same count of rows, but 200 of the 300 ids replaced by new ones: the guard refuses
    _write(path, "csv", [*range(100), *range(1000, 1205)], {i: f"new text {i}" for i in range(1000, 1205)})
    refused = run_here(fake, "run", str(job), "--quiet")
    assert refused.returncode == 1 and "no longer hold 205 of the output's 305 rows" in refused.stderr


def test_a_grown_compressed_export_is_read_again_whole_buying_only_new_rows(tmp_path, fake, reads):
    import gzip

    path = tmp_path / "export.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("id,text\n" + "".join(_line("csv", i) for i in range(300)))
    job = _job(tmp_path, fake, path, shard_rows=100)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    with gzip.open(path, "at") as fh:  # a second gzip member: the stream cannot be entered in its middle
        fh.write("".join(_line("csv", i) for i in range(300, 305)))
    fake.reset_records()
    reads.clear()

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert reads == [(path.name, 0, 0)]
    assert sorted(fake.received_texts()) == sorted(TEXTS[300:305])
    _expect(tmp_path / "out", {i: TEXTS[i] for i in range(305)})


def test_sigkill_during_a_growing_file_refresh_then_the_same_command_is_exact(tmp_path, srv):
    path = tmp_path / "export.csv"
    _write(path, "csv", range(1000))
    job = job_for(
        tmp_path,
        srv,
        path,
        input={"path": str(path), "text": "text", "id": "id"},
        limits={"batch_inputs": 10, "concurrency": 2},
        output={"shard_rows": 200},
    )
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    _write(path, "csv", range(1000, 2000), mode="a")
    srv.reset_records()

    kill_mid_run(srv, job, 12)  # killed with requests in flight, a tail unit or two committed

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    _expect(out, {i: TEXTS[i] for i in range(2000)})
    assert run_here(None, "verify", str(job)).returncode == 0
    bought = srv.received_texts()
    assert set(bought) == set(TEXTS[1000:2000])  # the 1,000 rows held are never bought again
    assert len(bought) <= 1000 + 2 * 10 * 2  # and the new ones once, but for the requests in flight at the kill


def test_the_readme_nightly_makefile_recipe_on_day_two_of_one_growing_csv(tmp_path, srv):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run it every day") :]
    recipe = re.search(r"```make\n(.*?)```", section, re.S).group(1)
    (tmp_path / "Makefile").write_text(recipe)
    docs = tmp_path / "data" / "docs"
    docs.mkdir(parents=True)
    (tmp_path / "jobs").mkdir()
    write_job(
        tmp_path / "jobs" / "docs.toml",
        {
            "input": {"path": "data/docs/export.csv", "text": "text", "id": "id"},
            "model": {"provider": "openai-compatible", "base_url": srv.url, "name": "fake"},
            "output": {"path": "out/docs"},
        },
    )
    env = cli_env(PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")

    def nightly(ids) -> subprocess.CompletedProcess:
        _write(docs / "export.csv", "csv", ids, mode="a" if (docs / "export.csv").exists() else "w")
        (docs / "_SUCCESS").touch()
        return subprocess.run(["make", "vectors"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    day1 = nightly(range(300))
    assert day1.returncode == 0, day1.stdout + day1.stderr
    srv.reset_records()
    day2 = nightly(range(300, 305))
    assert day2.returncode == 0, day2.stdout + day2.stderr
    assert "OK" in day2.stdout  # verify, the recipe's second line
    assert sorted(srv.received_texts()) == sorted(TEXTS[300:305])
    _expect(tmp_path / "out" / "docs", {i: TEXTS[i] for i in range(305)})


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_grown_by_blank_lines_only_has_no_new_row(tmp_path, fake, fmt):
    path = tmp_path / f"export.{fmt}"
    _write(path, fmt, range(300))
    job = _job(tmp_path, fake, path, shard_rows=100)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    with open(path, "a") as fh:
        fh.write("\n\n")
    fake.reset_records()
    for _ in range(2):
        result = run_here(fake, "run", str(job), "--quiet")
        assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr and fake.received_texts() == []
    _expect(tmp_path / "out", {i: TEXTS[i] for i in range(300)})


def test_a_grown_small_file_packed_with_others_then_a_kill_loses_no_answer(tmp_path, srv):
    # three small exports share one packed shard; the middle one grows and a fourth is added; a kill
    # with the new file's answers in the journal: the rerun finds them under the same unit name
    data = tmp_path / "data"
    data.mkdir()
    for f, ids in enumerate((range(0, 100), range(100, 200), range(200, 300))):
        _write(data / f"e{f}.csv", "csv", ids)
    job = job_for(
        tmp_path,
        srv,
        data,
        input={"path": str(data), "text": "text", "id": "id"},
        limits={"batch_inputs": 10, "concurrency": 2},
    )
    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    _write(data / "e1.csv", "csv", range(300, 305), mode="a")
    _write(data / "e3.csv", "csv", range(305, 905))
    srv.reset_records()

    kill_mid_run(srv, job, 20)

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    _expect(tmp_path / "out", {i: TEXTS[i] for i in range(905)})
    assert run_here(None, "verify", str(job)).returncode == 0
    bought = srv.received_texts()
    assert set(bought) == set(TEXTS[300:905])
    assert len(bought) <= 605 + 2 * (2 * 10 + 2 * 10)  # the journal's answers are not bought again
