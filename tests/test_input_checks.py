"""Input checks that run before the first request: ids, duplicate columns, non-string text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.errors import InputError
from batchembed.input import checks as inputcheck
from batchembed.input.discover import discover
from tests.conftest import job_for, message_lines, read_output, run_here


def _run(tmp_path, fake, path, **sections):
    result = run_here(fake, "run", str(job_for(tmp_path, fake, path, **sections)), "--quiet")
    return result


def _fails_before_sending(result, fake) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fake.requests == []  # no token spent
    return lines[0]


def test_duplicate_id_across_files_names_the_id_and_both_rows(tmp_path, fake):
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]}), data / "1.parquet")
    (data / "2.csv").write_text('\ufeffid,text\r\nd,"multi\r\nline"\r\n\r\nb,again\r\n')
    line = _fails_before_sending(_run(tmp_path, fake, data), fake)
    assert "input.id 'b' appears in rows 1.parquet:1 and 2.csv:1" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("empty", [None, ""])
def test_null_or_empty_id_names_the_row(tmp_path, fake, empty):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", empty, "d"], "text": ["w", "x", "y", "z"]}), path)
    line = _fails_before_sending(_run(tmp_path, fake, path), fake)
    assert f"{path}: row 2 (in.parquet:2) has no id" in line


def test_empty_id_cell_in_a_csv(tmp_path, fake):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,a\n,b\n")
    line = _fails_before_sending(_run(tmp_path, fake, path), fake)
    assert "row 1 (in.csv:1) has no id" in line


def test_duplicate_header_names_are_refused(tmp_path, fake):
    path = tmp_path / "in.csv"
    path.write_text("id,text,text\n1,a,b\n")
    line = _fails_before_sending(_run(tmp_path, fake, path), fake)
    assert "column 'text' appears 2 times (columns 2, 3)" in line


def test_non_string_text_column_needs_cast_text(tmp_path, fake):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": pa.array([10, 20, 30], pa.int64())}), path)
    line = _fails_before_sending(_run(tmp_path, fake, path), fake)
    assert "text column 'text' holds int64, not strings; set input.cast_text = true" in line

    result = _run(tmp_path, fake, path, input={"cast_text": True})
    assert result.returncode == 0, result.stderr
    assert sorted(fake.received_texts()) == ["10", "20", "30"]
    assert read_output(tmp_path / "out").num_rows == 3


def test_repeated_ids_are_found_after_spilling_to_disk(tmp_path):
    n = 50_000
    ids = np.arange(n).astype(str).tolist()
    ids[40_001] = ids[7]  # one repeat, far apart
    pq.write_table(pa.table({"id": ids}), tmp_path / "in.parquet", row_group_size=5_000)
    sources = discover(str(tmp_path / "in.parquet"))
    with pytest.raises(InputError, match=r"input.id '7' appears in rows in.parquet:7 and in.parquet:40001"):
        inputcheck.check_ids(sources, "id", limit=3_000)  # held hashes spilled many times
    ids[40_001] = "unique"
    pq.write_table(pa.table({"id": ids}), tmp_path / "in.parquet", row_group_size=5_000)
    inputcheck.check_ids(discover(str(tmp_path / "in.parquet")), "id", limit=3_000)


def test_plan_refuses_the_same_inputs_without_sending(tmp_path, fake):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,a\n2,b\n1,c\n")
    result = run_here(fake, "plan", str(job_for(tmp_path, fake, path)))
    assert result.returncode == 1
    assert "input.id '1' appears in rows in.csv:0 and in.csv:2" in result.stderr
    assert fake.requests == []
