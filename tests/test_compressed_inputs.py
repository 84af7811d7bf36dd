"""Compressed CSV and JSON Lines (.gz, .zst, .bz2, .xz), on disk and in a bucket, and many files of
mixed kinds in one job: the same rows, ids and row numbers as the plain files; a truncated file is an
error naming it, and what was committed before it stays committed."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pyarrow as pa
import pytest

from batchembed.input import jsonl as sources_jsonl
from batchembed.input.discover import discover
from batchembed.input.read import iter_batches
from tests.conftest import (
    assert_vectors,
    cli_env,
    job_for,
    make_texts,
    message_lines,
    read_output,
    run_here,
    write_parquet,
)

CODECS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def compress(data: bytes, suffix: str) -> bytes:
    """``data`` as the standard tools write it (zstd: pyarrow's codec, a standard zstd frame)."""
    if suffix == ".zst":
        return pa.Codec("zstd").compress(data, asbytes=True)
    return CODECS[suffix](data)


def jsonl_bytes(texts: list[str], first_id: int = 0, nested: bool = True) -> bytes:
    """Records ``{"id", "doc": {"text"}}`` (or ``{"id", "text"}``), and a blank line at the end."""
    lines = [
        json.dumps({"id": f"r{first_id + i}", **({"doc": {"text": t}} if nested else {"text": t})})
        for i, t in enumerate(texts)
    ]
    return ("\n".join(lines) + "\n\n").encode()


def csv_bytes(texts: list[str], first_id: int = 0) -> bytes:
    body = "".join(f'r{first_id + i},"{t}"\r\n' for i, t in enumerate(texts))
    return ("\ufeffid,text\r\n" + body).encode()


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2", ".xz"])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_compressed_file_reads_like_the_plain_one(tmp_path, fake, suffix, kind):
    texts = make_texts(500, seed=3)
    data = jsonl_bytes(texts) if kind == "jsonl" else csv_bytes(texts)
    path = tmp_path / f"rows.{kind}{suffix}"
    path.write_bytes(compress(data, suffix))
    text = "doc.text" if kind == "jsonl" else "text"

    src = discover(str(path))[0]
    assert src.compression is not None and src.format == kind
    resumed = [v for b in iter_batches(src, ["id"], start_row=437) for v in b.column(0).to_pylist()]
    assert resumed == [f"r{i}" for i in range(437, 500)]  # committed records skipped by count

    job = job_for(tmp_path, fake, path, input={"text": text}, output={"shard_rows": 128})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(500)]
    assert_vectors(table, {f"r{i}": t for i, t in enumerate(texts)}, 16)
    assert run_here(None, "verify", str(job)).returncode == 0


@pytest.mark.parametrize("name", ["rows.jsonl.gz", "rows.csv.zst"])
def test_a_truncated_file_is_named_and_what_was_committed_stays(tmp_path, fake, monkeypatch, name):
    monkeypatch.setattr(sources_jsonl, "JSON_BLOCK", 1 << 14)  # small blocks: many units before the damage
    monkeypatch.setattr("batchembed.input.csv.CSV_BLOCK", 1 << 14)
    texts = make_texts(20_000, seed=5)  # ~3 MB: the damage is well past the stream's read-ahead
    data = jsonl_bytes(texts) if ".jsonl" in name else csv_bytes(texts)
    blob = compress(data, Path(name).suffix)
    path = tmp_path / name
    path.write_bytes(blob[: len(blob) * 3 // 4])
    text = "doc.text" if ".jsonl" in name else "text"

    # with input.id, the id check reads the whole file first: the damage stops the job before any request
    first = job_for(tmp_path, fake, path, input={"text": text}, output={"path": str(tmp_path / "checked")})
    checked = run_here(fake, "run", str(first), "--quiet")
    assert f"{path}: the " in _one_error_line(checked) and "data ends early or is damaged" in checked.stderr
    assert fake.requests == []

    # with generated ids the rows stream: every whole unit read before the damage is still sent and
    # committed (requests are in flight when the reader meets the damage), then the run fails
    fake.latency = 0.02
    job = job_for(tmp_path, fake, path, input={"text": text, "id": None}, output={"shard_rows": 2000})
    result = run_here(fake, "run", str(job), "--quiet")
    line = _one_error_line(result)
    assert f"{path}: the " in line and "data ends early or is damaged after" in line, line
    read = int(re.search(r"after ([\d,]+) rows", line).group(1).replace(",", ""))
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    table = read_output(tmp_path / "out")
    done = table.num_rows
    assert done == status["rows_done"] == read // 2000 * 2000 > 0
    assert table.column("id").to_pylist() == [f"{name}:{i}" for i in range(done)]
    assert_vectors(table, {f"{name}:{i}": t for i, t in enumerate(texts)}, 16)


def _one_error_line(result) -> str:
    """The run's one error line; the only other lines allowed are the periodic progress lines a quiet run
    writes every 10 s (a slow machine reaches one)."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_many_files_of_mixed_kinds_in_one_job(tmp_path, fake):
    """Parquet, CSV and JSON Lines, compressed or not, big and small (small ones packed into shared
    shards), with one id column: every row once, in file order, with its own vector."""
    texts = make_texts(2600, seed=7)
    root = tmp_path / "in"
    root.mkdir()
    write_parquet(root / "a.parquet", texts[:1000], id=pa.array([f"r{i}" for i in range(1000)]))
    (root / "b.csv.gz").write_bytes(compress(csv_bytes(texts[1000:1030], 1000), ".gz"))
    (root / "c.jsonl").write_bytes(jsonl_bytes(texts[1030:1050], 1030, nested=False))
    (root / "d.ndjson.zst").write_bytes(compress(jsonl_bytes(texts[1050:2100], 1050, nested=False), ".zst"))
    (root / "e.csv").write_bytes(csv_bytes(texts[2100:2600], 2100))
    (root / "notes.txt").write_text("not an input")
    (root / "old.parquet.gz").write_bytes(b"Parquet compresses inside: not an input")
    job = job_for(tmp_path, fake, root, input={"text": "text"}, output={"shard_rows": 300})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(2600)]
    assert_vectors(table, {f"r{i}": t for i, t in enumerate(texts)}, 16)
    assert run_here(None, "verify", str(job)).returncode == 0
    assert run_here(None, "plan", str(job)).returncode == 0

    # the id rules hold across kinds: an id of the JSON Lines file repeated in the gzipped CSV
    (root / "b.csv.gz").write_bytes(compress(csv_bytes(texts[1000:1030], 1000) + b"r1040,again\r\n", ".gz"))
    clash = run_here(fake, "run", str(job), "--restart", "--quiet")
    assert clash.returncode == 1
    assert "input.id 'r1040' appears in rows b.csv.gz:30 and c.jsonl:10" in clash.stderr, clash.stderr


def test_compressed_inputs_stream_from_a_bucket(tmp_path, s3, fake):
    pytest.importorskip("obstore")
    bucket = s3.new_bucket()
    texts = make_texts(400, seed=9)
    s3.put(bucket, "corpus/part-0.jsonl.gz", compress(jsonl_bytes(texts[:150]), ".gz"))
    s3.put(bucket, "corpus/part-1.jsonl.xz", compress(jsonl_bytes(texts[150:300], 150), ".xz"))
    s3.put(bucket, "corpus/part-2.jsonl.bz2", compress(jsonl_bytes(texts[300:], 300), ".bz2"))
    # [storage] endpoint names this module's server (a filesystem is reused per store settings in a process)
    job = job_for(
        tmp_path,
        fake,
        f"s3://{bucket}/corpus/*.jsonl.*",
        input={"text": "doc.text"},
        output={"shard_rows": 100},
        storage={"endpoint": s3.url},
    )
    env = cli_env(**s3.env())
    result = run_here(fake, "run", str(job), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(400)]
    assert_vectors(table, {f"r{i}": t for i, t in enumerate(texts)}, 16)
    assert run_here(None, "verify", str(job), env=env).returncode == 0
