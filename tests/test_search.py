"""``batchembed search JOB "text"``: the rows nearest to a text, embedded by the job's own model as a query,
read from the output's current Delta version; through the real CLI against real outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.testing import FakeProvider, expected_vector
from tests.conftest import job_for, make_texts, run_here, write_parquet

N = 300


def _output(tmp_path, fake, **sections):
    """A finished output of N rows keeping ``grp`` (a, b, c) and the text, with one blank row."""
    texts = make_texts(N)
    texts[7] = "   "  # a blank row: kept with a null vector, never a match
    groups = pa.array(["abc"[i % 3] for i in range(N)])
    src = write_parquet(tmp_path / "in.parquet", texts, grp=groups)
    keep = {"input": {"keep": ["grp", "text"], **sections.pop("input", {})}}
    job = job_for(tmp_path, fake, src, **keep, **sections)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    return job, texts


def _nearest(texts: list[str], query: str, dim: int, among=None) -> list[int]:
    """Row ids ranked by cosine similarity of the fake's vectors (the expected answer)."""
    q = expected_vector(query, dim)
    rows = [i for i, t in enumerate(texts) if t.strip() and (among is None or among(i))]
    scores = {i: float(np.dot(expected_vector(texts[i], dim), q)) for i in rows}
    return sorted(rows, key=lambda i: -scores[i])


def test_the_nearest_rows_come_first_with_their_kept_columns_and_a_clipped_text(tmp_path, fake):
    job, texts = _output(tmp_path, fake)
    fake.reset_records()

    result = run_here(fake, "search", str(job), texts[42], "-k", "4")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "grp", "text"]
    rows = [line.split() for line in lines[1:]]
    assert [int(r[2]) for r in rows] == _nearest(texts, texts[42], 16)[:4]
    assert rows[0][:3] == ["1", "1.0000", "42"] and rows[0][3] == "abc"[42 % 3]
    assert all(len(line) <= 200 for line in lines)  # long texts are clipped
    assert fake.received_texts() == [texts[42]]  # one request: the query, as the job embeds a text


@pytest.mark.parametrize("id_column", ["id", None])
def test_a_job_that_does_not_keep_its_text_shows_the_text_from_its_inputs(tmp_path, fake, id_column):
    texts = make_texts(N)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, input={"keep": [], "id": id_column})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert "text" not in pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).names

    result = run_here(fake, "search", str(job), texts[42], "-k", "3", "--json")

    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    nearest = _nearest(texts, texts[42], 16)[:3]
    assert [d["text"] for d in docs] == [texts[i] for i in nearest]  # each row's own text, read by its id
    assert [d["id"] for d in docs] == (nearest if id_column else [f"in.parquet:{i}" for i in nearest])


def test_json_lines_hold_rank_score_id_and_every_kept_column(tmp_path, fake):
    job, texts = _output(tmp_path, fake)

    result = run_here(fake, "search", str(job), texts[5], "-k", "3", "--json")

    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["rank"] for d in docs] == [1, 2, 3]
    assert [d["id"] for d in docs] == _nearest(texts, texts[5], 16)[:3]
    assert docs[0]["text"] == texts[5] and docs[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert docs[0]["score"] >= docs[1]["score"] >= docs[2]["score"]


def test_where_keeps_only_the_rows_it_selects(tmp_path, fake):
    job, texts = _output(tmp_path, fake)

    result = run_here(fake, "search", str(job), texts[42], "-k", "5", "--where", "grp = 'b' AND id > 10", "--json")

    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    want = _nearest(texts, texts[42], 16, among=lambda i: i % 3 == 1 and i > 10)[:5]
    assert [d["id"] for d in docs] == want and {d["grp"] for d in docs} == {"b"}


def test_a_where_naming_a_column_the_output_lacks_names_the_near_one(tmp_path, fake):
    job, _ = _output(tmp_path, fake)

    result = run_here(fake, "search", str(job), "rivers", "--where", "grop = 'b'")

    assert result.returncode == 2
    assert "--where \"grop = 'b'\": the table has no column 'grop'; did you mean 'grp'?" in result.stderr
    assert "only the id and the input.keep columns are in the output" in result.stderr


def test_a_where_polars_cannot_read_says_so_with_an_example(tmp_path, fake):
    job, _ = _output(tmp_path, fake)

    result = run_here(fake, "search", str(job), "rivers", "--where", "grp = ")

    assert result.returncode == 2
    assert (
        "--where 'grp = ': not an expression polars' SQL can read" in result.stderr and "e.g. --where" in result.stderr
    )


def test_the_query_gets_the_models_query_instruction(tmp_path):
    """A Qwen3 model's documents go as they are; a query gets ``Instruct: ...\\nQuery:`` (input.role = "query")."""
    fake = FakeProvider(dim=64)
    model = {"name": "fireworks/qwen3-embedding-0p6b", "dimensions": 64}
    job, texts = _output(tmp_path, fake, model=model)
    assert texts[3] in fake.received_texts()  # documents: no prefix
    fake.reset_records()

    result = run_here(fake, "search", str(job), "a question", "-k", "1")

    assert result.returncode == 0, result.stderr
    (sent,) = fake.received_texts()
    assert sent.startswith("Instruct: Given a web search query") and sent.endswith("\nQuery:a question")


def test_an_output_of_other_model_settings_is_refused_saying_what_differs(tmp_path, fake):
    job, _ = _output(tmp_path, fake)

    result = run_here(fake, "search", str(job), "rivers", "--set", "model.dimensions=8")

    assert result.returncode == 1
    assert "was written with other model settings (model.dimensions: not set -> 8)" in result.stderr


def test_searching_before_the_first_run_says_to_run_first(tmp_path, fake):
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src)

    result = run_here(fake, "search", str(job), "rivers")

    assert result.returncode == 1 and "no batchembed output here yet: run the job first" in result.stderr


def test_rows_of_replaced_files_are_not_found_after_a_refresh(tmp_path, fake):
    """The current Delta version only: a refresh's replaced shards are gone from what search reads."""
    job, texts = _output(tmp_path, fake)
    changed = list(texts)
    changed[42] = "an entirely new text about lighthouses"
    groups = pa.array(["abc"[i % 3] for i in range(N)])
    write_parquet(tmp_path / "in.parquet", changed, grp=groups)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    docs = [
        json.loads(x)
        for x in run_here(fake, "search", str(job), texts[42], "-k", "3", "--json").stdout.split("\n")
        if x
    ]

    assert 42 not in [d["id"] for d in docs[:1]] and all(d["text"] != texts[42] for d in docs)
    top = json.loads(run_here(fake, "search", str(job), changed[42], "-k", "1", "--json").stdout)
    assert top["id"] == 42 and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert pq.read_metadata(next((tmp_path / "out").glob("part-*.parquet"))).num_rows > 0
