"""The README's "Sinks" recipes, run as written: a job on the embedded model keeps a Postgres and a LanceDB
table, and each recipe finds a document by a query embedded with the job's own model."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, cli_env, environment, run_here, write_job
from tests.sinkcheck import add_sinks

pytest.importorskip("psycopg")
pytest.importorskip("lancedb")
pytest.importorskip("onnxruntime")

DOCS = [
    "To rotate your API keys, create a new key in the console, deploy it, then revoke the old one.",
    "The quarterly report shows revenue growth in every region except the north.",
    "Bake the bread at 220 degrees for thirty minutes until the crust is golden.",
    "Our office is closed on public holidays; support answers emails the next working day.",
    "The river flooded the lower town after three days of heavy rain.",
]


def _recipes() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Sinks: vectors where they are searched", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python runby=test_sinks_readme\n(.*?)```", section, flags=re.S)


def test_the_readme_recipes_search_each_sink_with_the_jobs_own_model(tmp_path, postgres):
    pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), tmp_path / "docs.parquet")
    job = write_job(
        tmp_path / "docs.toml",
        {
            "input": {"path": str(tmp_path / "docs.parquet"), "text": "text", "id": "id"},
            "model": {"provider": "local", "threads": 1},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    add_sinks(
        job,
        {"kind": "postgres", "table": "doc_vectors", "index": "hnsw"},
        {"kind": "lancedb", "uri": str(tmp_path / "lancedb"), "table": "doc_vectors"},
    )
    env = cli_env(BATCHEMBED_PG_DSN=postgres.database("readme"))
    result = run_here(None, "run", str(job), "--quiet", env=env)
    assert result.returncode == 0, result.stderr

    recipes = _recipes()
    assert len(recipes) == 2
    scope: dict = {}
    with environment(env):
        for code in recipes:
            code = code.replace('"jobs/docs.toml"', repr(str(job))).replace(
                '"out/lancedb"', repr(str(tmp_path / "lancedb"))
            )
            exec(code, scope)

    assert scope["hits"][0][0] == 0  # the key-rotation document first
    assert len(scope["hits"]) == len(DOCS)
    assert scope["results"][0]["id"] == 0
    assert [h[0] for h in scope["hits"]] == [r["id"] for r in scope["results"]]  # both stores rank alike
