"""CSV as exports write it: record-exact row numbers through run, kill -9, resume and verify; BOM,
huge cells, malformed rows and invalid UTF-8 named by row and line."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchembed.errors import InputError
from batchembed.input import csv as sources_csv
from batchembed.input.chunks import iter_chunks
from batchembed.input.discover import discover
from batchembed.input.read import iter_batches
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.tasks.ids import chunk_positions
from tests.conftest import assert_vectors, job_for, kill_mid_run, message_lines, read_output, run_here


def write_csv(path: Path, rows: list[tuple], *, crlf=True, bom=True, blank_every=0, header=("id", "text")) -> Path:
    """A CSV as Excel/pandas write it: quoted newlines, optional BOM, CRLF and blank lines between records."""
    end = "\r\n" if crlf else "\n"
    buf = io.StringIO()
    buf.write(",".join(_field(v) for v in header) + end)
    for i, row in enumerate(rows):
        buf.write(",".join(_field(v) for v in row) + end)
        if blank_every and i % blank_every == blank_every - 1:
            buf.write(end)
    path.write_bytes(("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8"))
    return path


def _field(value) -> str:
    """RFC 4180 quoting: only fields holding a comma, a quote or a line break are quoted."""
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in '\r\n,"') else text


def messy_texts(n: int) -> list[str]:
    return [f'row {i}, said "hi"\r\nline two of {i}\n\nend {i}' if i % 3 else f"plain {i}" for i in range(n)]


# ------------------------------------------------------------------------------ property: skip by records

_text = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té')), max_size=12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(_text, min_size=1, max_size=40),
    shard_rows=st.integers(1, 16),
    chunk_rows=st.integers(1, 5),
    pack=st.booleans(),
    data=st.data(),
)
def test_resume_from_any_committed_units_reads_every_record_exactly_once(
    tmp_path_factory, texts, shard_rows, chunk_rows, pack, data
):
    """CSVs with quoted newlines, commas, quotes, blank lines, CRLF or LF and a BOM, one or several
    files (small ones packed together or not), "killed" after any set of committed units: the
    resumed walk yields exactly the records not committed, each with its own file and record number,
    and every unit keeps its name and its rows."""
    directory = tmp_path_factory.mktemp("csv")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(texts)), max_size=8)))
    bounds = [0, *cuts, len(texts)]
    truth = []  # (file, record number, id, text): what any CSV reader must see
    for f, (a, b) in enumerate(itertools.pairwise(bounds)):
        name = f"f{f}.csv"
        write_csv(
            directory / name,
            [(f"id{i}", texts[i]) for i in range(a, b)],
            crlf=data.draw(st.booleans()),
            bom=data.draw(st.booleans()),
            blank_every=data.draw(st.integers(0, 4)),
        )
        truth += [(name, i - a, f"id{i}", texts[i]) for i in range(a, b)]
    sources = discover(str(directory))

    def walk(manifest):
        units: dict[str, tuple] = {}
        for chunk in iter_chunks(sources, manifest, ["id", "text"], shard_rows, chunk_rows, pack_small_files=pack):
            ids = chunk.table.column("id").to_pylist()
            got = chunk.table.column("text").to_pylist()
            files = chunk.file_names().to_pylist()
            positions = chunk_positions(chunk).tolist()
            unit, rows = units.get(chunk.unit.name, (chunk.unit, []))
            rows += [(files[k], positions[k], ids[k], got[k]) for k in range(len(ids))]
            units[chunk.unit.name] = (unit, rows)
        return units

    first = walk(Manifest(fingerprint={}))
    assert [r for _, rows in first.values() for r in rows] == truth

    # "kill": any subset of the units was committed (the writer commits in order, but holes happen on stop)
    committed = data.draw(st.lists(st.sampled_from(list(first)), unique=True)) if first else []
    manifest = Manifest(fingerprint={})
    for name in committed:
        unit, rows = first[name]
        file = unit.source.name if unit.source else None
        files = [[n, r] for n, r in unit.files]
        end = unit.end if unit.end is not None else 0
        manifest.shards.append(
            ShardRecord(name, unit.kind, file, unit.start, end, unit.eof, len(rows), 0, None, 0, "", 0, files=files)
        )
    second = walk(manifest)
    assert not set(second) & set(committed)
    for name, (_, rows) in second.items():
        assert rows == first[name][1]  # a unit redone has the same name and the same rows
    order = {name: i for i, name in enumerate(sorted({t[0] for t in truth}))}
    everything = sorted(
        [r for n in committed for r in first[n][1]] + [r for _, rows in second.values() for r in rows],
        key=lambda r: (order[r[0]], r[1]),
    )
    assert everything == truth  # every record exactly once, with its own file and record number


# ------------------------------------------------------------------------------------ real processes


def test_sigkill_resume_of_a_messy_csv_is_exactly_once_and_verifies(tmp_path, srv):
    n = 1200
    texts = messy_texts(n)
    src = write_csv(tmp_path / "in.csv", [(i, t) for i, t in enumerate(texts)], blank_every=10)
    srv.latency = 0.005
    job = job_for(tmp_path, srv, src, limits={"batch_inputs": 20, "concurrency": 4}, output={"shard_rows": 200})
    kill_mid_run(srv, job, 25)
    assert 0 < len(list((tmp_path / "out").glob("part-*.parquet"))) < n // 200  # killed half way

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr

    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [str(i) for i in range(n)]  # none twice, none lost, in order
    assert_vectors(table, {str(i): t for i, t in enumerate(texts)}, 16)
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout
    status = run_here(None, "status", str(job), "--json")
    assert '"rows_done": 1200' in status.stdout


def test_generated_ids_count_records_not_lines(tmp_path, fake):
    texts = ["one\nline two", "two", "three\r\nmore"]
    src = write_csv(tmp_path / "in.csv", [(i, t) for i, t in enumerate(texts)], blank_every=1)
    job = job_for(tmp_path, fake, src, input={"id": None, "keep": ["id"]})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("_row_id").to_pylist() == ["in.csv:0", "in.csv:1", "in.csv:2"]
    assert table.column("id").to_pylist() == ["0", "1", "2"]
    assert run_here(fake, "verify", str(job)).returncode == 0


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_malformed_row_is_named_by_its_line(tmp_path, fake):
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text\r\n0,"a\r\nquoted"\r\n\r\n1,fine\r\n2,one,too many\r\n3,x\r\n')
    line = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path)), "--quiet"))
    assert f"{path}: line 6 (row 2) has 3 fields, the header has 2" in line
    assert fake.requests == []  # nothing was sent for a file that cannot be read


def test_invalid_utf8_is_named_by_row(tmp_path, fake):
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text\n0,ok\n1,"multi\nline"\n2,caf\xe9\n')
    line = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path)), "--quiet"))
    assert f"{path}: row 2 (line 5) is not valid UTF-8" in line


# ------------------------------------------------------------------------------------------- big cells


def test_a_cell_of_64_mb_is_read(tmp_path):
    big = "x" * (64 << 20)
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as fh:
        fh.write("id,text\n0,small\n1,")
        fh.write(big)
        fh.write("\n2,after\n")
    del big
    src = discover(str(path))[0]
    lengths = [len(t) for b in iter_batches(src, ["text"]) for t in b.column(0).to_pylist()]
    assert lengths == [5, 64 << 20, 5]
    resumed = [t for b in iter_batches(src, ["id"], start_row=2) for t in b.column(0).to_pylist()]
    assert resumed == ["2"]


def test_a_row_over_the_block_limit_is_named_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_csv, "CSV_BLOCK", 1 << 16)
    monkeypatch.setattr(sources_csv, "CSV_MAX_BLOCK", 1 << 18)
    path = write_csv(tmp_path / "in.csv", [(0, "a"), (1, "b\nc"), (2, "y" * (1 << 19))], bom=False)
    src = discover(str(path))[0]
    with pytest.raises(InputError, match=r"in\.csv: row 2 \(line 5\) is larger than the 0 MB"):
        list(iter_batches(src, ["id", "text"]))
