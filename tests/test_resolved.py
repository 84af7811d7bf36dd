"""A job resolved once (``batchembed.job.resolved``) and assembled from that (``batchembed.run.assemble``)."""

from __future__ import annotations

import dataclasses

import pytest

from batchembed.errors import ConfigError
from batchembed.job.config import load_job
from batchembed.job.resolved import resolve
from batchembed.providers.openai_compat import OpenAICompatibleEmbedder
from batchembed.run import assemble as assembly
from batchembed.stats import Stats
from batchembed.tasks.embed import EmbedTask
from batchembed.tasks.rerank import RerankTask
from batchembed.tasks.tokens import LocalModelCounter
from tests.conftest import write_job


def job_file(tmp_path, **sections):
    base = {"input": {"path": str(tmp_path / "in.parquet")}, "output": {"path": str(tmp_path / "out")}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_job(write_job(tmp_path / "job.toml", base))


def test_provider_defaults_prefix_and_preset_are_resolved_once(tmp_path):
    job = job_file(tmp_path, input={"role": "query"}, limits={"batch_inputs": 5000, "requests_per_minute": 7})
    resolved = resolve(job)
    assert resolved.config is job and resolve(resolved) is resolved
    m = resolved.model
    assert (m.provider, m.name, m.base_url) == (
        "fireworks",
        "fireworks/qwen3-embedding-8b",
        "https://api.fireworks.ai/inference/v1",
    )
    assert (m.api_key_env, m.requests_per_minute, m.tokens_per_minute) == ("FIREWORKS_API_KEY", 7, 1_000_000)
    assert m.batch_inputs == 2048  # the provider's own cap wins over limits.batch_inputs
    assert (resolved.encoding, resolved.fall_back_to_float) == ("float", True)  # Fireworks: floats under auto
    assert resolved.prefix.startswith("Instruct: ") and resolved.prefix.endswith("\nQuery:")
    assert resolved.preset is not None and resolved.preset.id == "fireworks/qwen3-embedding-8b"
    assert (resolved.input_tokens, resolved.model_max_tokens, resolved.tokenizer) == (8192, None, "estimate")
    assert resolved.local_model is None and dict(resolved.identity) == {}

    compat = resolve(
        job_file(tmp_path, model={"provider": "openai-compatible", "base_url": "http://h/v1/", "encoding": "float"})
    )
    assert (compat.model.base_url, compat.model.api_key_env, compat.encoding) == ("http://h/v1", None, "float")
    assert compat.preset is None and not compat.fall_back_to_float
    with pytest.raises(dataclasses.FrozenInstanceError):
        compat.prefix = "x"  # type: ignore[misc]


def test_resolving_checks_dimensions_but_reads_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    openai = {"provider": "openai", "name": "text-embedding-3-small"}
    with pytest.raises(ConfigError, match=r"model\.dimensions"):
        resolve(job_file(tmp_path, model={**openai, "dimensions": 5000}))
    resolved = resolve(job_file(tmp_path, model={**openai, "dimensions": 256}))  # no key needed to resolve
    assert resolved.encoding == "base64"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        assembly.build_runner(resolved)  # the assembly is the one place that reads it


def test_assembly_builds_every_part_from_the_resolved_job(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-resolved-0123456789")
    resolved = resolve(job_file(tmp_path, model={"provider": "openai", "dimensions": 256}, input={"prefix": "p: "}))
    runner = assembly.build_runner(resolved)
    try:
        assert isinstance(runner.task, EmbedTask) and isinstance(runner.provider, OpenAICompatibleEmbedder)
        assert runner.job is resolved.config and runner.model == resolved.model
        assert runner.task.prefix == "p: " and runner.task.input_tokens == resolved.input_tokens
        # the job fingerprint is the task's settings and the resolved job's (the input files are its work)
        assert runner.fingerprint() == {**runner.task.fingerprint(), **resolved.fingerprint()}
        assert "sk-test" not in repr(resolved)  # the key never lives in the resolved job
    finally:
        runner.task.close()

    rerank = resolve(
        job_file(
            tmp_path,
            model={"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"},
            rerank={"query": "q", "document": "d"},
        )
    )
    task = assembly.build_task(rerank, None, assembly.build_counter(rerank), stats=Stats(), memo=None)
    assert isinstance(task, RerankTask) and task.input_tokens == rerank.input_tokens and task.model == rerank.model


def test_a_local_model_is_loaded_once_and_caps_input_tokens(tmp_path):
    pytest.importorskip("onnxruntime")
    job = job_file(tmp_path, model={"provider": "local"}, limits={"input_tokens": 5000, "batch_tokens": 6000})
    resolved = resolve(job)
    model = resolved.local_model
    assert model is not None and resolved.model_max_tokens == model.max_tokens
    assert resolved.input_tokens == model.max_tokens < 5000  # the model's own limit wins
    assert dict(resolved.identity) == {"sha256": model.sha256}
    assert resolved.fingerprint()["model.sha256"] == model.sha256
    assert assembly.build_provider(resolved) is model  # the assembly reuses it rather than loading again
    assert isinstance(assembly.build_counter(resolved), LocalModelCounter)
