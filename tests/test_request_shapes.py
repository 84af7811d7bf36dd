"""The exact JSON each provider is sent, online and in the batch tier: the field names for the vector
size, the encoding, the role and truncation (``providers/request_fields.py``), checked against a fake
that speaks the provider's own shape strictly (unknown fields refused, the size read from the
provider's field), and the output written at the asked size."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.testing.batchapi import FakeBatchProvider
from batchembed.testing.fakeserver import FakeProvider
from tests.conftest import assert_vectors, cli_env, job_for, make_texts, read_output, run_here, write_job, write_parquet

ENV = cli_env(FIREWORKS_API_KEY="fw-test", OPENAI_API_KEY="sk-test", MISTRAL_API_KEY="m-test", VOYAGE_API_KEY="v-test")

VOYAGE = {"model": "fake", "encoding_format": "base64", "truncation": False, "output_dimension": 8}
#: provider, input.role, the fake's embeddings shape, every field but ``input`` the provider is sent.
ONLINE = [
    ("fireworks", "document", "openai", {"model": "fake", "encoding_format": "float", "dimensions": 8}),
    ("openai", "document", "openai", {"model": "fake", "encoding_format": "base64", "dimensions": 8}),
    ("openai-compatible", "document", "openai", {"model": "fake", "encoding_format": "base64", "dimensions": 8}),
    ("mistral", "document", "mistral", {"model": "fake", "encoding_format": "float", "output_dimension": 8}),
    ("voyage", "document", "voyage", VOYAGE),
    ("voyage", "query", "voyage", {**VOYAGE, "input_type": "query"}),
]


@pytest.mark.parametrize(("provider", "role", "shape", "sent"), ONLINE, ids=lambda v: str(v)[:20])
def test_online_embeddings_request_in_each_providers_names(tmp_path, provider, role, shape, sent):
    fake = FakeProvider(dim=16)
    fake.embed_format = shape
    fake.strict = True
    texts = make_texts(12)
    job = job_for(
        tmp_path,
        fake,
        write_parquet(tmp_path / "in.parquet", texts),
        model={"provider": provider, "dimensions": 8},
        input={"role": role},
    )
    result = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr
    assert fake.requests
    for request in fake.requests:
        body = dict(request.body)
        assert isinstance(body.pop("input"), list)
        assert body == sent
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["tokens"] > 0


def test_voyage_usage_in_total_tokens_is_read(tmp_path):
    fake = FakeProvider(dim=16)
    fake.embed_format = "voyage"
    texts = make_texts(12)
    src = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, src, model={"provider": "voyage"}, limits={"batch_inputs": 2})
    result = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["usage_ratio"] is not None  # the server's own count (usage.total_tokens) was read


@pytest.mark.parametrize(("encoding", "sent"), [("float", None), ("base64", "base64")])
def test_voyage_is_never_sent_encoding_format_float(tmp_path, encoding, sent):
    fake = FakeProvider(dim=16)
    fake.embed_format = "voyage"
    fake.strict = True  # refuses "float", which Voyage does not list
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, model={"provider": "voyage", "encoding": encoding})
    result = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr
    assert {r.body.get("encoding_format") for r in fake.requests} == {sent}


#: rerank format, every field but ``query`` and ``documents`` that shape is sent.
RERANK = [
    ("fireworks", {"model": "fake", "return_documents": False, "task": "find answers"}),
    ("cohere", {"model": "fake"}),
    ("jina", {"model": "fake", "return_documents": False}),
    ("vllm", {"model": "fake"}),
    ("voyage", {"model": "fake", "return_documents": False, "truncation": False}),
    ("tei", {"return_text": False}),
]


@pytest.mark.parametrize(("fmt", "sent"), RERANK, ids=[f for f, _ in RERANK])
def test_online_rerank_request_in_each_shape(tmp_path, fmt, sent):
    fake = FakeProvider(dim=16)
    fake.rerank_format = fmt
    fake.strict = True
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["q one"] * 3 + ["q two"] * 2, "document": make_texts(5)}), pairs)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(pairs)},
            "model": {"provider": "openai-compatible", "base_url": fake.url, "name": "fake"},
            "output": {"path": str(tmp_path / "out")},
            "rerank": {"layout": "pairs", "format": fmt, "task": "find answers"},
        },
    )
    result = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr
    for request in fake.requests:
        body = dict(request.body)
        body.pop("query")
        body.pop("texts" if fmt == "tei" else "documents")
        assert body == sent
    assert read_output(tmp_path / "out").num_rows == 5


#: batch provider, its batch API's shape, the options on each line (or on the batch), where they go.
BATCH = [
    ("openai", {"encoding_format": "float", "dimensions": 8}),
    ("mistral", {"encoding_format": "float", "output_dimension": 8}),
    ("voyage", {"truncation": False, "output_dimension": 8}),
]


@pytest.mark.parametrize(("provider", "options"), BATCH, ids=[p for p, _ in BATCH])
def test_batch_lines_carry_the_providers_names(tmp_path, provider, options):
    fake = FakeBatchProvider(dim=16, shape=provider)
    texts = make_texts(40)
    inp = write_parquet(tmp_path / "in.parquet", texts)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(inp), "text": "text", "id": "id"},
            "model": {
                "provider": provider,
                "base_url": fake.url,
                "name": "fake",
                "tier": "batch",
                "batch_poll_seconds": 0,
                "dimensions": 8,
            },
            "limits": {"batch_inputs": 16},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    result = run_here(fake, "run", str(job), "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 8)
    (batch,) = fake.batches.values()
    for line in batch["lines"]:
        body = dict(line["body"])
        assert isinstance(body.pop("input"), list)
        if provider == "voyage":  # the options and the model are the batch's (request_params)
            assert body == {} and set(line) == {"custom_id", "body"}
            assert batch["params"] == {**options, "model": "fake"}
        elif provider == "mistral":  # the model is the job's
            assert body == options and batch["model"] == "fake"
        else:
            assert body == {**options, "model": "fake"}
