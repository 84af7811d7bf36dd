"""Issue 23 against Infinity (``make test-servers``): a ``dimensions`` job writes unit vectors.

Infinity honours ``dimensions`` by cutting the full vector and not normalising it again (lengths
~0.3-0.5 at 64 of 384 dims). Its model's full vectors are unit length, which batchembed learns from
the canary's full vector (the served name is in no catalogue), so with ``model.normalize = "auto"``
every written vector is the server's cut, L2-normalised; ``"never"`` writes the cut as sent.
The server comes from ``INFINITY_URL`` / ``INFINITY_MODEL`` (set by ``tests/servers/launch.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tests.conftest import make_texts, read_output, run_here, write_job, write_parquet

URL = os.environ["INFINITY_URL"]
MODEL = os.environ["INFINITY_MODEL"]
ROWS = 200


def _run(tmp_path: Path, name: str, src: Path, **model) -> tuple[dict[int, np.ndarray], str]:
    """Run a job against Infinity into ``tmp_path/name``; its vectors by id, and its stderr."""
    job = write_job(
        tmp_path / f"{name}.toml",
        {
            "input": {"path": str(src), "text": "text", "id": "id"},
            "model": {"provider": "openai-compatible", "base_url": URL, "name": MODEL, "timeout": 900.0, **model},
            "limits": {"batch_inputs": 64, "concurrency": 4, "max_retries": 3},
            "output": {"path": str(tmp_path / name), "shard_rows": 200},
        },
    )
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / name)
    ids = table.column("id").to_pylist()
    matrix = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(ids), -1)
    return dict(zip(ids, matrix, strict=True)), result.stderr


def _lengths(vectors: dict[int, np.ndarray]) -> np.ndarray:
    return np.linalg.norm(np.stack(list(vectors.values())).astype(np.float64), axis=1)


def test_a_dimensions_job_writes_the_servers_cut_normalised(tmp_path):
    src = write_parquet(tmp_path / "in.parquet", make_texts(ROWS))

    sent, quiet = _run(tmp_path, "never", src, dimensions=64, normalize="never")
    written, said = _run(tmp_path, "auto", src, dimensions=64)
    full, _ = _run(tmp_path, "full", src)

    # what Infinity sends for dimensions = 64: far from unit length
    assert _lengths(sent).max() < 0.9 and "not unit length" not in quiet
    # what batchembed writes by default: unit length, the server's own cut divided by its length
    assert np.abs(_lengths(written) - 1).max() < 1e-5
    for i, vector in written.items():
        np.testing.assert_allclose(vector, sent[i] / np.linalg.norm(sent[i]), atol=1e-6)
        cut = full[i][:64]  # Matryoshka: the full vector's first 64 values, normalised again
        np.testing.assert_allclose(vector, cut / np.linalg.norm(cut), atol=1e-4)
    assert said.count("not unit length") == 1
    assert np.abs(_lengths(full) - 1).max() < 1e-3  # the full vectors were unit length all along

    manifest = json.loads((tmp_path / "auto" / "_manifest.json").read_text())
    assert manifest["server"]["unit_norm"] is True
    assert manifest["server"]["unit_norm_by"].startswith("canary's full vector")
    report = json.loads((tmp_path / "auto" / "_report.json").read_text())
    assert report["normalize"]["vectors_normalized"] == ROWS
    assert abs(report["vector_norms"]["min"] - 1) < 1e-5 and abs(report["vector_norms"]["max"] - 1) < 1e-5
