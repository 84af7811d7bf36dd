"""Every written vector is what the model promises (issue 23): a server that cuts ``dimensions`` without
normalising again (Infinity) gets its vectors L2-normalised here under ``model.normalize = "auto"``;
``never`` keeps them as sent, ``always`` normalises whatever the model; the model's unit norm is learned
once per job and recorded; lengths are reported; an all-zero vector is never written as an answer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchembed.job.config import JobConfig, ModelConfig
from batchembed.job.resolved import resolve
from batchembed.sending.server_checks import CANARY_TEXT
from batchembed.tasks.normalize import VectorCheck
from batchembed.testing import Respond
from batchembed.testing.answers import expected_vector, raw_cut_vector
from tests.conftest import job_for, make_texts, read_output, run_here, write_parquet


def _vectors(out) -> tuple[list[int], np.ndarray]:
    table = read_output(out)
    column = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), column.values.to_numpy().reshape(len(table), -1)


def _json(path) -> dict:
    return json.loads(path.read_text())


def _full_probes(fake) -> list:
    """Canary requests asking for the full vector (no ``dimensions``)."""
    return [r for r in fake.canary_requests() if "dimensions" not in r.body]


def test_a_cut_the_server_did_not_normalise_is_normalised_and_said_once(tmp_path, fake):
    fake.cut_unnormalized = True  # Infinity's way with `dimensions`
    texts = make_texts(500)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    ids, vectors = _vectors(tmp_path / "out")
    want = np.stack([raw_cut_vector(texts[i], 8, 16) for i in ids])
    assert np.linalg.norm(want, axis=1).max() < 0.99  # what the server sent is not unit length
    np.testing.assert_allclose(vectors, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    assert result.stderr.count("not unit length") == 1
    assert len(_full_probes(fake)) == 1  # the model's full vector, asked for once
    manifest = _json(tmp_path / "out" / "_manifest.json")
    assert manifest["server"]["unit_norm"] is True and "canary's full vector" in manifest["server"]["unit_norm_by"]
    report = _json(tmp_path / "out" / "_report.json")
    assert report["normalize"] == {
        "mode": "auto",
        "model_unit_norm": True,
        "normalizes_here": True,
        "vectors_normalized": 500,
    }
    assert report["vector_norms"]["min"] == pytest.approx(1, abs=1e-5)
    assert report["vector_norms"]["max"] == pytest.approx(1, abs=1e-5)
    (first,) = (tmp_path / "out").glob("part-00000-*.parquet")
    meta = json.loads(pq.read_schema(first).metadata[b"batchembed"])
    assert meta["normalize"] == "auto" and meta["normalizes_here"] is True and meta["model_unit_norm"] is True

    status = run_here(None, "status", str(job))
    assert "lengths 1.0000..1.0000 (min..max)" in status.stdout
    assert 'model.normalize = "auto": a vector not of unit length is L2-normalised before writing' in status.stdout


def test_never_writes_what_the_server_sent_and_reports_its_lengths(tmp_path, fake):
    fake.cut_unnormalized = True
    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8, "normalize": "never"})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    ids, vectors = _vectors(tmp_path / "out")
    want = np.stack([raw_cut_vector(texts[i], 8, 16) for i in ids])
    np.testing.assert_array_equal(vectors, want)
    assert "not unit length" not in result.stderr
    lengths = np.linalg.norm(want, axis=1)
    report = _json(tmp_path / "out" / "_report.json")
    assert report["normalize"]["vectors_normalized"] == 0 and report["normalize"]["normalizes_here"] is False
    assert report["vector_norms"]["min"] == pytest.approx(lengths.min(), abs=1e-5)
    assert report["vector_norms"]["max"] == pytest.approx(lengths.max(), abs=1e-5)
    status = run_here(None, "status", "--json", str(job))
    assert _json_text(status.stdout)["vector_norms"]["max"] == pytest.approx(lengths.max(), abs=1e-5)

    # a different setting is a different job: resuming this output with "auto" is refused
    changed = run_here(fake, "run", str(job), "--quiet", "--set", 'model.normalize="auto"')
    assert changed.returncode == 1 and "model.normalize" in changed.stderr


def _json_text(text: str) -> dict:
    return json.loads(text)


def test_auto_leaves_a_model_whose_vectors_are_not_unit_length_alone(tmp_path, fake):
    fake.vector_scale = 3.0  # the model's full vectors have length 3: nothing promised, nothing changed
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src)

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    ids, vectors = _vectors(tmp_path / "out")
    np.testing.assert_allclose(vectors, 3 * np.stack([expected_vector(texts[i], 16) for i in ids]), rtol=1e-6)
    assert not _full_probes(fake)[1:]  # no dimensions: the canary's own vector was the full one
    manifest = _json(tmp_path / "out" / "_manifest.json")
    assert manifest["server"]["unit_norm"] is False and manifest["server"]["unit_norm_by"] == "canary: length 3.0000"
    assert _json(tmp_path / "out" / "_report.json")["vector_norms"]["min"] == pytest.approx(3, abs=1e-4)


def test_always_normalises_whatever_the_model(tmp_path, fake):
    fake.vector_scale = 3.0
    texts = make_texts(100)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"normalize": "always"})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    ids, vectors = _vectors(tmp_path / "out")
    np.testing.assert_allclose(vectors, np.stack([expected_vector(texts[i], 16) for i in ids]), atol=1e-6)
    assert result.stderr.count("not unit length") == 1 and 'model.normalize = "always"' in result.stderr


def test_an_all_zero_vector_is_a_failed_row_never_a_written_one(tmp_path, fake):
    texts = make_texts(300)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8}, limits={"max_retries": 1})
    fake.cut_unnormalized = True
    fake.zero_texts = {texts[123]}

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 3, result.stderr  # the row failed; every other row is written
    ids, vectors = _vectors(tmp_path / "out")
    assert 123 not in ids and len(ids) == 299
    assert np.linalg.norm(vectors, axis=1).min() == pytest.approx(1, abs=1e-5)
    failed = pq.read_table(tmp_path / "out" / "_failed.parquet").to_pylist()
    assert [f["id"] for f in failed] == ["123"] and "all zeros" in failed[0]["error"]
    # the request was halved down to the row alone: no other row was given up with it
    assert [r.inputs for r in fake.requests if texts[123] in r.inputs][-1] == [texts[123]]

    # the server is fixed: the row is retried and written; the model's unit norm is not asked again
    fake.zero_texts = set()
    again = run_here(fake, "run", str(job), "--quiet")
    assert again.returncode == 0, again.stderr
    ids, vectors = _vectors(tmp_path / "out")
    assert sorted(ids) == list(range(300))
    assert np.linalg.norm(vectors, axis=1).min() == pytest.approx(1, abs=1e-5)
    assert len(_full_probes(fake)) == 1  # learned once per job, kept in the manifest


def test_a_server_refusing_the_full_vector_leaves_the_vectors_as_sent_and_says_so(tmp_path, fake):
    fake.cut_unnormalized = True
    # the canary is answered; the same text without `dimensions` is refused
    fake.script(Respond(200, match=CANARY_TEXT), Respond(400, body={"error": {"message": "no"}}, match=CANARY_TEXT))
    texts = make_texts(50)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"dimensions": 8})

    result = run_here(fake, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert "could not learn whether the model's full vectors are unit length" in result.stderr
    ids, vectors = _vectors(tmp_path / "out")
    np.testing.assert_array_equal(vectors, np.stack([raw_cut_vector(texts[i], 8, 16) for i in ids]))
    assert "unit_norm" not in _json(tmp_path / "out" / "_manifest.json")["server"]  # the next run asks again


def test_a_catalogued_model_needs_no_probe(tmp_path):
    """OpenAI documents unit vectors: the catalogue knows, for its own provider only; a local model knows
    from its own files."""
    openai = resolve(_job(provider="openai", name="text-embedding-3-small", dimensions=256))
    assert openai.model_unit_norm is True
    elsewhere = _job(provider="openai-compatible", base_url="http://x", name="text-embedding-3-small")
    assert resolve(elsewhere).model_unit_norm is None  # another server serving the name: the canary looks
    assert resolve(_job(provider="fireworks", name="fireworks/qwen3-embedding-8b")).model_unit_norm is None
    assert resolve(_job(provider="local")).model_unit_norm is True  # the embedded MiniLM normalises itself


def _job(**model) -> JobConfig:
    return JobConfig(model=ModelConfig(**model))


def test_normalize_is_in_the_fingerprint_when_not_the_default():
    auto = resolve(_job(provider="openai")).fingerprint()
    never = resolve(_job(provider="openai", normalize="never")).fingerprint()
    assert "model.normalize" not in auto  # outputs begun before the setting existed keep their fingerprint
    assert never["model.normalize"] == "never"


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_zero_and_non_finite_vectors_are_faults_in_every_mode(mode):
    from batchembed.errors import InvalidVectors

    check = VectorCheck(mode)
    check.unit_norm = True
    good = np.eye(4, dtype=np.float32)
    for bad, what in ((np.zeros(4), "all zeros"), (np.array([np.nan, 0, 0, 1]), "NaN"), (np.full(4, np.inf), "NaN")):
        vectors = good.copy()
        vectors[2] = bad
        with pytest.raises(InvalidVectors, match=what) as caught:
            check.check(vectors)
        assert caught.value.items.tolist() == [2]
