"""JSON Lines as corpora ship it (BEIR/MTEB ``corpus.jsonl``, dataset exports): nested fields by dotted
path, record-counting row numbers through run, resume and verify, and every bad record named by file,
line and row."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchembed.errors import InputError
from batchembed.input import jsonl as sources_jsonl
from batchembed.input.chunks import iter_chunks
from batchembed.input.discover import discover
from batchembed.input.read import iter_batches
from batchembed.output.manifest import Manifest, ShardRecord
from batchembed.tasks.ids import chunk_positions
from tests.conftest import assert_vectors, job_for, kill_mid_run, message_lines, read_output, run_here


def write_jsonl(path: Path, records: list, *, blank_every: int = 0, crlf: bool = False) -> Path:
    """One JSON value per line (objects, or anything for the error tests), blank lines between some."""
    end = "\r\n" if crlf else "\n"
    lines = []
    for i, record in enumerate(records):
        lines.append(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
        if blank_every and i % blank_every == blank_every - 1:
            lines.append("  " if i % 2 else "")
    path.write_text(end.join(lines) + end, encoding="utf-8")
    return path


def corpus(n: int) -> list[dict]:
    """BEIR-like records: a nested title that some records lack, a text, extra fields nobody reads."""
    out = []
    for i in range(n):
        record = {"_id": f"d{i}", "text": f'text of {i}, with "quotes", commas and\nnewlines {"é" * (i % 4)}'}
        if i % 5:
            record["meta"] = {"title": f"Title {i}", "year": 1990 + i % 30, "tags": ["a", str(i)]}
        record["unused"] = i if i % 2 else "mixed kinds in a field nobody reads"
        out.append(record)
    return out


def text_of(record: dict) -> str:
    """What ``{meta.title}: {text}`` makes of a record (a missing field is null, filled in as nothing)."""
    return f"{record.get('meta', {}).get('title', '')}: {record['text']}"


def test_nested_fields_template_keep_and_generated_ids(tmp_path, fake):
    records = corpus(300)
    src = write_jsonl(tmp_path / "corpus.jsonl", records, blank_every=7, crlf=True)
    job = job_for(
        tmp_path,
        fake,
        src,
        input={"text": "{meta.title}: {text}", "id": None, "keep": ["_id", "meta.year", "meta.tags"]},
        output={"shard_rows": 64},
    )
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr

    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"corpus.jsonl:{i}" for i in range(300)]  # records, not lines
    assert table.column("_id").to_pylist() == [r["_id"] for r in records]
    assert table.column("meta.year").to_pylist() == [r.get("meta", {}).get("year") for r in records]
    assert table.column("meta.tags").to_pylist() == [r.get("meta", {}).get("tags") for r in records]
    assert_vectors(table, {f"corpus.jsonl:{i}": text_of(r) for i, r in enumerate(records)}, 16)
    assert run_here(fake, "verify", str(job)).returncode == 0
    assert '"rows_done": 300' in run_here(None, "status", str(job), "--json").stdout


def test_sigkill_resume_of_a_jsonl_is_exactly_once_and_verifies(tmp_path, srv):
    records = corpus(1200)
    src = write_jsonl(tmp_path / "corpus.ndjson", records, blank_every=10)
    srv.latency = 0.005
    job = job_for(
        tmp_path,
        srv,
        src,
        input={"text": "{meta.title}: {text}", "id": "_id"},
        limits={"batch_inputs": 20, "concurrency": 4},
        output={"shard_rows": 200},
    )
    kill_mid_run(srv, job, 25)
    assert 0 < len(list((tmp_path / "out").glob("part-*.parquet"))) < 6  # killed half way

    result = run_here(srv, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("_id").to_pylist() == [r["_id"] for r in records]  # none twice, none lost, in order
    assert_vectors(table, {r["_id"]: text_of(r) for r in records}, 16, id_column="_id")
    assert run_here(None, "verify", str(job)).returncode == 0


_value = st.text(alphabet=st.sampled_from(list('ab {}"\\\n\té')), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(_value, min_size=1, max_size=30),
    shard_rows=st.integers(1, 12),
    chunk_rows=st.integers(1, 5),
    data=st.data(),
)
def test_resume_from_any_committed_units_reads_every_record_exactly_once(
    tmp_path_factory, texts, shard_rows, chunk_rows, data
):
    """JSON Lines files with blank lines, CRLF or LF, "killed" after any set of committed units: the
    resumed walk yields exactly the records not committed, each with its own record number."""
    directory = tmp_path_factory.mktemp("jsonl")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(texts)), max_size=4)))
    truth = []
    for f, (a, b) in enumerate(itertools.pairwise([0, *cuts, len(texts)])):
        name = f"f{f}.jsonl"
        records = [{"id": f"id{i}", "doc": {"text": texts[i]}} for i in range(a, b)]
        write_jsonl(directory / name, records, blank_every=data.draw(st.integers(0, 3)), crlf=data.draw(st.booleans()))
        truth += [(name, i - a, f"id{i}", texts[i]) for i in range(a, b)]
    files = discover(str(directory))

    def walk(manifest):
        seen: dict[str, tuple] = {}
        for chunk in iter_chunks(files, manifest, ["id", "doc.text"], shard_rows, chunk_rows):
            rows = chunk_positions(chunk)
            names = chunk.file_names().to_pylist()
            got = list(
                zip(names, rows.tolist(), *(chunk.table.column(c).to_pylist() for c in ("id", "doc.text")), strict=True)
            )
            unit, before = seen.get(chunk.unit.name, (chunk.unit, []))
            seen[chunk.unit.name] = (unit, before + got)
        return seen

    first = walk(Manifest(fingerprint="x"))
    committed = data.draw(st.sets(st.sampled_from(sorted(first)))) if first else set()
    manifest = Manifest(fingerprint="x")
    for name in committed:
        unit, rows = first[name]
        end = unit.end if unit.end is not None else 0
        files_ = [[n, r] for n, r in unit.files]
        file = unit.source.name if unit.source else None
        manifest.shards.append(
            ShardRecord(name, unit.kind, file, unit.start, end, unit.eof, len(rows), 0, None, 0, "", 0, files=files_)
        )
    second = walk(manifest)
    assert not set(second) & set(committed)
    order = {name: i for i, name in enumerate(sorted({t[0] for t in truth}))}
    everything = sorted(
        [r for n in committed for r in first[n][1]] + [r for _, rows in second.values() for r in rows],
        key=lambda r: (order[r[0]], r[1]),
    )
    assert everything == truth


# ------------------------------------------------------------------------------------ bad records


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _lines_with(bad_at: int, bad: str, n: int = 40) -> list:
    """``n`` good records with ``bad`` in place of record ``bad_at``; a blank line after records 0 and 1."""
    records = [{"id": str(i), "text": f"t{i}"} for i in range(n)]
    records[bad_at] = bad
    return records


@pytest.mark.parametrize("far", [False, True], ids=["in-the-first-records", "after-the-sample"])
@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ('{"id": "x", "text": "unterminated', "is not valid JSON"),
        ('["an", "array"]', "is an array, not a JSON object"),
        ('{"id": "x", "text": 42}', "field 'text' is a number here, but text in the first records"),
    ],
    ids=["invalid-json", "not-an-object", "wrong-kind"],
)
def test_a_bad_record_is_named_by_file_line_and_row(tmp_path, fake, monkeypatch, far, bad, says):
    if far:  # the reader, not the first-records sample, meets it
        monkeypatch.setattr(sources_jsonl, "SAMPLE_RECORDS", 5)
    path = write_jsonl(tmp_path / "data.jsonl", _lines_with(15, bad), blank_every=1 if not far else 0)
    line, row = (31, 15) if not far else (16, 15)
    message = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path)), "--quiet"))
    assert f"{path}: line {line} (row {row})" in message and says in message, message
    assert fake.requests == []  # the checks read every record before anything is sent


def test_invalid_utf8_is_named_by_line_and_row(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(sources_jsonl, "SAMPLE_RECORDS", 3)
    path = tmp_path / "data.jsonl"
    good = b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(6))
    path.write_bytes(good + b'\n{"id": "6", "text": "caf\xe9"}\n')
    message = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path, input={"id": None})), "--quiet"))
    assert f"{path}: line 8 (row 6) is not valid UTF-8 text" in message


def test_first_record_null_is_an_error_not_a_crash(tmp_path, fake):
    """pyarrow's JSON reader crashes the process on a first record ``null``: it is refused before."""
    path = write_jsonl(tmp_path / "data.jsonl", ["null", {"id": "1", "text": "t"}])
    message = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path)), "--quiet"))
    assert f"{path}: line 1 (row 0) is null, not a JSON object" in message


def test_a_field_no_first_record_has_is_named_with_the_fields_seen(tmp_path, fake):
    path = write_jsonl(tmp_path / "data.jsonl", [{"id": "1", "meta": {"title": "x"}, "text": "t"}])
    job = job_for(tmp_path, fake, path, input={"text": "{meta.titel}"})
    message = _one_error_line(run_here(fake, "run", str(job), "--quiet"))
    assert (
        "no field 'meta.titel', which input.text's template {meta.titel} names, in the first 1,000 records; "
        "did you mean 'meta.title'? (fields: id, meta, meta.title, text)"
    ) in message


def test_a_number_text_field_needs_cast_text(tmp_path, fake):
    path = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "text": i * 10} for i in range(5)])
    message = _one_error_line(run_here(fake, "run", str(job_for(tmp_path, fake, path)), "--quiet"))
    assert "text column 'text' holds int64, not strings; set input.cast_text = true" in message
    result = run_here(fake, "run", str(job_for(tmp_path, fake, path, input={"cast_text": True})), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]  # numbers stay numbers, as in Parquet
    assert_vectors(table, {i: str(i * 10) for i in range(5)}, 16)


def test_repeated_nested_id_is_named_by_file_and_row(tmp_path, fake):
    records = [{"doc": {"id": f"k{i % 7 if i == 9 else i}"}, "text": "t"} for i in range(12)]
    path = write_jsonl(tmp_path / "data.jsonl", records, blank_every=2)
    message = _one_error_line(
        run_here(fake, "run", str(job_for(tmp_path, fake, path, input={"id": "doc.id"})), "--quiet")
    )
    assert "input.id 'k2' appears in rows data.jsonl:2 and data.jsonl:9" in message


def test_a_record_larger_than_the_block_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_jsonl, "JSON_BLOCK", 1 << 12)
    big = "x" * (1 << 16)
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": "a"}, {"text": big}, {"text": "after"}])
    src = discover(str(path))[0]
    assert [len(t) for b in iter_batches(src, ["text"]) for t in b.column(0).to_pylist()] == [1, 1 << 16, 5]
    assert [t for b in iter_batches(src, ["text"], start_row=2) for t in b.column(0).to_pylist()] == ["after"]
    monkeypatch.setattr(sources_jsonl, "JSON_MAX_BLOCK", 1 << 14)
    with pytest.raises(InputError, match=r"big\.jsonl: a record after row 1 is larger than the 0 MB"):
        list(iter_batches(src, ["text"]))


def test_an_empty_file_has_no_rows(tmp_path, fake):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.jsonl").write_text("\n\n")
    write_jsonl(tmp_path / "in" / "rows.jsonl", [{"id": "a", "text": "hello"}])
    result = run_here(fake, "run", str(job_for(tmp_path, fake, tmp_path / "in")), "--quiet")
    assert result.returncode == 0, result.stderr
    assert read_output(tmp_path / "out").column("id").to_pylist() == ["a"]
    verify = run_here(None, "verify", str(tmp_path / "job.toml"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
