"""`batchembed init INPUT`: a commented job file that `plan` and `run` take with no edit, proposing the
text and id columns from the data, the local model, an output path; never overwriting a file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import tempfile
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchembed.errors import InputError
from batchembed.input.discover import discover
from batchembed.job.config import JobConfig, load_job
from tests.conftest import run_here

N = 60
DATA = {
    "doc_id": [f"doc-{i:03d}" for i in range(N)],
    "title": [f"Title {i}" for i in range(N)],
    "body": [f"Paragraph {i} tells a longer story about rivers, stones and the weather." for i in range(N)],
    "url": [f"https://example.org/a/very/long/path/to/document/number/{i:05d}" for i in range(N)],  # long, no spaces
    "views": [i * 7 % 13 for i in range(N)],  # repeats: not an id
}


def _json_lines(table: pa.Table, path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


#: format -> (suffix, writer): every one of them that a run reads, init reads
WRITERS = {
    "parquet": (".parquet", lambda t, p: pq.write_table(t, p)),
    "csv": (".csv", lambda t, p: pacsv.write_csv(t, p)),
    "jsonl": (".jsonl", _json_lines),
}


def _read_by_runs() -> list[str]:
    """The formats above that ``sources.discover`` (what a run reads) accepts in this version."""
    with tempfile.TemporaryDirectory() as tmp:
        found = []
        for fmt, (suffix, writer) in WRITERS.items():
            path = Path(tmp) / f"probe{suffix}"
            writer(pa.table({"text": ["a b"]}), path)
            with contextlib.suppress(InputError):  # "matches no ... file": not an input format here
                found += [fmt] if discover(str(path)) else []
        return found


def _write(tmp_path, fmt: str, data: dict | None = None, name: str = "docs") -> str:
    suffix, writer = WRITERS[fmt]
    (tmp_path / "data").mkdir(exist_ok=True)
    writer(pa.table(data or DATA), tmp_path / "data" / f"{name}{suffix}")
    return f"data/{name}{suffix}"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Work in ``tmp_path`` as a user in their project directory: relative paths, as typed."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("fmt", _read_by_runs())
def test_init_then_plan_and_run_with_no_edit(here, fmt):
    src = _write(here, fmt)

    made = run_here(None, "init", src)
    assert made.returncode == 0, made.stderr
    assert "wrote jobs/docs.toml" in made.stdout and "batchembed run jobs/docs.toml" in made.stdout
    job = tomllib.loads((here / "jobs" / "docs.toml").read_text())
    # the longest column with prose in it, not the longer URL; the id by its name and uniqueness
    assert job["input"] == {"path": src, "text": "body", "id": "doc_id"}
    assert job["model"] == {"provider": "local"} and job["output"] == {"path": "out/docs"}

    plan = run_here(None, "plan", "jobs/docs.toml")
    assert plan.returncode == 0, plan.stderr
    assert f"rows             {N}" in plan.stdout and "ETA              about" in plan.stdout

    run = run_here(None, "run", "jobs/docs.toml", "--quiet")
    assert run.returncode == 0, run.stderr
    out = pa.concat_tables(pq.read_table(p) for p in sorted((here / "out" / "docs").glob("part-*.parquet")))
    assert sorted(out.column("doc_id").to_pylist()) == DATA["doc_id"]
    assert out.column("embedding").null_count == 0 and out.schema.field("embedding").type.list_size == 384
    assert run_here(None, "verify", "jobs/docs.toml").returncode == 0


def test_init_never_overwrites(here):
    src = _write(here, "parquet")
    assert run_here(None, "init", src, "-o", "jobs/mine.toml").returncode == 0
    before = (here / "jobs" / "mine.toml").read_text()

    again = run_here(None, "init", src, "--text", "title", "-o", "jobs/mine.toml")
    assert again.returncode == 2 and "jobs/mine.toml already exists" in again.stderr
    assert (here / "jobs" / "mine.toml").read_text() == before


def test_every_other_key_is_commented_with_its_default(here):
    assert run_here(None, "init", _write(here, "parquet")).returncode == 0
    text = (here / "jobs" / "docs.toml").read_text()
    sections: dict[str, dict[str, str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m[1]
            sections[section] = {}
        elif m := re.match(r"(?:# )?(\w+) = (.*?)\s+# (.+)$", line):
            assert section, line
            sections[section][m[1]] = m[2]
            assert m[3].strip(), f"{section}.{m[1]} has no explanation"
    defaults = JobConfig()
    for table in ("input", "model", "limits", "output", "cache", "storage", "engine"):
        config = getattr(defaults, table)
        for field in dataclasses.fields(config):
            assert field.name in sections[table], f"{table}.{field.name} is missing from the job file"
            default = getattr(config, field.name)
            line = f"# {field.name} = {sections[table][field.name]}"
            if default is not None and line in text:  # a commented key shows the real default
                shown = tomllib.loads(f"v = {sections[table][field.name]}")["v"]
                assert shown == (list(default) if isinstance(default, tuple) else default), f"{table}.{field.name}"
    # every commented line, uncommented at once, is still a valid job file
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    (here / "jobs" / "all.toml").write_text(uncommented)
    assert load_job(here / "jobs" / "all.toml").limits.batch_tokens == 100_000


def test_csv_columns_are_text_but_ids_are_still_found(here):
    data = {"id": [str(i) for i in range(N)], "summary": DATA["title"], "content": DATA["body"]}
    assert run_here(None, "init", _write(here, "csv", data, "notes")).returncode == 0
    job = load_job(here / "jobs" / "notes.toml")
    assert (job.input.text, job.input.id, job.output.path) == ("content", "id", "out/notes")


def test_named_columns_a_template_and_no_id(here):
    data = {"title": DATA["title"], "body": DATA["body"], "views": DATA["views"]}
    src = _write(here, "parquet", data, "t")
    made = run_here(None, "init", src, "--text", "{title}: {body}", "-o", "jobs/t.toml")
    assert made.returncode == 0, made.stderr
    job = load_job(here / "jobs" / "t.toml")
    assert job.input.text == "{title}: {body}" and job.input.id is None  # views repeat: ids are "file:row"
    assert 'no column is unique on the first 60 rows: each row\'s id is "file:row"' in made.stdout

    made = run_here(None, "init", src, "--text", "views", "-o", "jobs/n.toml")
    job = load_job(here / "jobs" / "n.toml")
    assert (job.input.text, job.input.cast_text) == ("views", True)  # a number column, embedded as text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "abstract"], "has no column 'abstract' (columns: doc_id (string), title (string)"),
        (["--id", "views"], "--id 'views': not unique"),
        (["--model", "no-such-model"], "`batchembed models` lists them"),
        (["--model", "fireworks/qwen3-reranker-8b"], "a reranker; init writes embedding jobs"),
    ],
)
def test_bad_choices_are_usage_errors_and_write_nothing(here, args, message):
    made = run_here(None, "init", _write(here, "parquet"), *args)
    assert made.returncode == 2 and message in made.stderr
    assert not (here / "jobs" / "docs.toml").exists()


def test_no_text_column_asks_for_one(here):
    made = run_here(None, "init", _write(here, "parquet", {"a": [1, 2], "b": [0.5, 1.5]}, "nums"))
    assert made.returncode == 2 and "has no text column (columns: a (int64), b (double)); name" in made.stderr


def test_a_remote_model_is_written_with_its_key_variable_and_plans(here):
    made = run_here(None, "init", _write(here, "parquet"), "--model", "text-embedding-3-small")
    assert made.returncode == 0, made.stderr
    text = (here / "jobs" / "docs.toml").read_text()
    assert "export OPENAI_API_KEY=" in text
    job = load_job(here / "jobs" / "docs.toml")
    assert (job.model.provider, job.model.name) == ("openai", "text-embedding-3-small")
    plan = run_here(None, "plan", "jobs/docs.toml")  # no key needed to plan
    assert plan.returncode == 0 and "requests/min" in plan.stdout and "the configured limits" in plan.stdout


def test_an_existing_output_is_not_proposed_again(here):
    (here / "out" / "docs").mkdir(parents=True)
    (here / "out" / "docs" / "_manifest.json").write_text("{}")
    assert run_here(None, "init", _write(here, "parquet")).returncode == 0
    assert load_job(here / "jobs" / "docs.toml").output.path == "out/docs-2"
