"""The built-in model catalogue: presets, dimension checks, prefixes, the `models` listing."""

from __future__ import annotations

import json

import pytest

from batchembed.errors import ConfigError
from batchembed.job import catalog
from batchembed.job.catalog import PRESETS, check_dimensions, document_prefix, format_table, lookup, models_command

QWEN_DEFAULT = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.mark.parametrize(
    ("name", "kind", "native", "min_dim"),
    [
        ("fireworks/qwen3-embedding-8b", "embed", 4096, 32),
        ("fireworks/qwen3-embedding-4b", "embed", 2560, 32),
        ("fireworks/qwen3-embedding-0p6b", "embed", 1024, 32),
        ("fireworks/qwen3-reranker-8b", "rerank", None, None),
        ("fireworks/qwen3-reranker-4b", "rerank", None, None),
        ("fireworks/qwen3-reranker-0p6b", "rerank", None, None),
        ("nomic-ai/nomic-embed-text-v1.5", "embed", 768, 64),
        ("nomic-ai/nomic-embed-text-v1", "embed", 768, None),
        ("BAAI/bge-base-en-v1.5", "embed", 768, None),
        ("BAAI/bge-small-en-v1.5", "embed", 384, None),
        ("thenlper/gte-large", "embed", 1024, None),
        ("mixedbread-ai/mxbai-embed-large-v1", "embed", 1024, None),
        ("sentence-transformers/all-MiniLM-L6-v2", "embed", 384, None),
        ("text-embedding-3-small", "embed", 1536, 1),
        ("text-embedding-3-large", "embed", 3072, 1),
        ("text-embedding-ada-002", "embed", 1536, None),
        ("all-MiniLM-L6-v2", "embed", 384, 1),
    ],
)
def test_presets(name, kind, native, min_dim):
    p = lookup(name)
    assert p is not None and p.id == name
    assert (p.kind, p.native_dim, p.min_dim) == (kind, native, min_dim)
    assert p.description


def test_preset_details():
    assert len(PRESETS) == 17
    assert lookup("text-embedding-3-small").price_per_million_tokens == 0.02
    assert lookup("text-embedding-3-large").price_per_million_tokens == 0.13
    assert lookup("text-embedding-ada-002").price_per_million_tokens == 0.10
    assert lookup("fireworks/qwen3-embedding-8b").price_per_million_tokens is None  # not invented
    assert lookup("fireworks/qwen3-embedding-8b").query_format == "qwen3"
    assert lookup("nomic-ai/nomic-embed-text-v1.5").query_format == "nomic"
    assert lookup("all-MiniLM-L6-v2").provider == "local"
    for p in PRESETS.values():
        assert p.provider in ("fireworks", "openai", "local")
        assert p.kind in ("embed", "rerank")
        assert (p.native_dim is None) == (p.kind == "rerank")
        assert p.min_dim is None or 1 <= p.min_dim <= p.native_dim


def test_lookup_normalises_names():
    assert lookup("accounts/fireworks/models/qwen3-embedding-8b").id == "fireworks/qwen3-embedding-8b"
    assert lookup("BAAI/BGE-base-en-v1.5").id == "BAAI/bge-base-en-v1.5"
    assert lookup("sentence-transformers/all-MiniLM-L6-v2", provider="local").provider == "local"
    assert lookup("sentence-transformers/all-MiniLM-L6-v2", provider="fireworks").provider == "fireworks"
    assert lookup("fireworks/qwen3-embedding-8b", provider="local") is None
    assert lookup(None) is None


@pytest.mark.parametrize(
    "name",
    [
        "accounts/x/deployedModels/y",
        "fireworks/glm-4p5",
        "accounts/me/models/my-upload",
        "fake",
        "default",
        "",
    ],
)
def test_unknown_models_pass_through(name):
    assert lookup(name) is None
    for dims in (None, 1, 7, 4096, 100_000):
        check_dimensions(name, dims)
    assert document_prefix(name, "document", None, "") == ""
    assert document_prefix(name, "document", "task", "p: ") == "p: "
    assert document_prefix(name, "query", None, "p: ") == "p: "
    # an instruction on a query: the Qwen3 format (what instruction-aware LLM embedders expect)
    assert document_prefix(name, "query", "Find code", "") == "Instruct: Find code\nQuery:"


@pytest.mark.parametrize(
    ("name", "good", "bad", "range_text"),
    [
        ("fireworks/qwen3-embedding-8b", [32, 1024, 4096], [31, 4097, 8192], "32..4096"),
        ("fireworks/qwen3-embedding-4b", [32, 2560], [16, 2561, 4096], "32..2560"),
        ("fireworks/qwen3-embedding-0p6b", [32, 1024], [31, 1025], "32..1024"),
        ("nomic-ai/nomic-embed-text-v1.5", [64, 256, 768], [32, 769], "64..768"),
        ("text-embedding-3-small", [1, 256, 1536], [1537, 3072], "1..1536"),
        ("text-embedding-3-large", [1, 3072], [3073], "1..3072"),
        ("all-MiniLM-L6-v2", [1, 384], [385], "1..384"),
    ],
)
def test_dimension_range(name, good, bad, range_text):
    check_dimensions(name, None)
    for d in good:
        check_dimensions(name, d)
    for d in bad:
        with pytest.raises(ConfigError) as err:
            check_dimensions(name, d)
        message = str(err.value)
        assert "model.dimensions" in message and range_text in message and str(d) in message


@pytest.mark.parametrize("name", ["text-embedding-ada-002", "BAAI/bge-base-en-v1.5", "nomic-ai/nomic-embed-text-v1"])
def test_dimensions_refused_by_fixed_size_models(name):
    check_dimensions(name, None)
    with pytest.raises(ConfigError, match=r"model\.dimensions.*valid range: none"):
        check_dimensions(name, lookup(name).native_dim)


def test_dimensions_refused_by_rerankers():
    with pytest.raises(ConfigError, match=r"model\.dimensions.*reranker"):
        check_dimensions("fireworks/qwen3-reranker-8b", 256)


def test_dimensions_are_checked_only_on_the_presets_provider():
    check_dimensions("fireworks/qwen3-embedding-8b", 16, provider="openai-compatible")  # the server decides
    check_dimensions("BAAI/bge-base-en-v1.5", 256, provider="openai-compatible")  # e.g. TEI truncating
    with pytest.raises(ConfigError, match=r"32\.\.4096"):
        check_dimensions("fireworks/qwen3-embedding-8b", 16, provider="fireworks")
    with pytest.raises(ConfigError, match=r"1\.\.1536"):
        check_dimensions("text-embedding-3-small", 2000, provider="openai")


def test_local_aliases_use_the_local_range():
    check_dimensions("sentence-transformers/all-MiniLM-L6-v2", 128, provider="local")
    with pytest.raises(ConfigError, match=r"1\.\.384"):
        check_dimensions("sentence-transformers/all-MiniLM-L6-v2", 500, provider="local")
    with pytest.raises(ConfigError, match="valid range: none"):  # the Fireworks deployment of the same model
        check_dimensions("sentence-transformers/all-MiniLM-L6-v2", 128, provider="fireworks")


def test_qwen3_prefixes():
    name = "fireworks/qwen3-embedding-8b"
    assert document_prefix(name, "query", None, "") == f"Instruct: {QWEN_DEFAULT}\nQuery:"
    assert document_prefix(name, "query", None, "") == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
    )
    assert not document_prefix(name, "query", None, "").endswith(" ")  # no space after "Query:"
    assert document_prefix(name, "query", "Find the bug", "") == "Instruct: Find the bug\nQuery:"
    assert document_prefix(name, "query", "Find the bug", "[q] ") == "Instruct: Find the bug\nQuery:[q] "
    assert document_prefix(name, "document", "Find the bug", "") == ""
    assert document_prefix(name, "document", None, "doc: ") == "doc: "
    assert document_prefix("accounts/fireworks/models/qwen3-embedding-0p6b", "query", None, "").startswith(
        "Instruct: Given a "
    )


def test_nomic_prefixes_and_explicit_prefix_wins():
    for name in ("nomic-ai/nomic-embed-text-v1.5", "nomic-ai/nomic-embed-text-v1"):
        assert document_prefix(name, "query", None, "") == "search_query: "
        assert document_prefix(name, "document", None, "") == "search_document: "
        assert document_prefix(name, "query", "ignored for nomic", "") == "search_query: "
        assert document_prefix(name, "document", None, "clustering: ") == "clustering: "
        assert document_prefix(name, "query", None, "classification: ") == "classification: "


def test_other_known_models_behave_like_unknown_ones():
    assert document_prefix("BAAI/bge-base-en-v1.5", "document", None, "") == ""
    assert document_prefix("BAAI/bge-base-en-v1.5", "query", None, "") == ""
    assert document_prefix("text-embedding-3-small", "query", "Find", "") == "Instruct: Find\nQuery:"


def test_format_table_lists_every_preset():
    table = format_table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "PROVIDER", "KIND"]
    for p in PRESETS.values():
        row = next(line for line in lines if line.split()[0] == p.id)
        assert p.kind in row and p.description in row
        assert catalog.dims_text(p) in row
    assert "4096 (32..4096)" in table and "768 (64..768)" in table and "1536 (fixed)" in table
    assert "deployedModels" in table  # says unknown models work too


def test_models_command(capsys):
    assert models_command() == 0
    out = capsys.readouterr().out
    assert all(p.id in out for p in PRESETS.values())
    assert models_command(as_json=True) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listed] == list(PRESETS)
    small = next(m for m in listed if m["id"] == "text-embedding-3-small")
    assert small["native_dim"] == 1536 and small["min_dim"] == 1 and small["price_per_million_tokens"] == 0.02
