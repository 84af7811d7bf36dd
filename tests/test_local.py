"""The in-process ONNX embedder: vectors, ordering, Matryoshka cuts, checksums, custom models."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from batchembed.errors import ConfigError
from batchembed.providers import model_files
from batchembed.providers.base import EmbeddingResult
from batchembed.providers.local import LocalEmbedder
from batchembed.providers.model_files import default_model_files

TEXTS = [
    "The delivery arrived two days late and the box was damaged.",
    "Hi",
    "My package came late and the packaging was crushed.",
    "Photosynthesis converts light energy into chemical energy in plants. " * 3,
    "I love this coffee grinder, it is quiet and grinds evenly.",
    "antidisestablishmentarianism " * 200,  # longer than 256 tokens: truncated
    "Der Zug nach Berlin hat Verspätung.",
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory) -> Path:
    """A custom model directory holding copies of the shipped files."""
    directory = tmp_path_factory.mktemp("minilm")
    model, tokenizer = default_model_files()
    shutil.copy(model, directory / "model.onnx")
    shutil.copy(tokenizer, directory / "tokenizer.json")
    return directory


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_are_384_dim_unit_norm_and_deterministic(embedder):
    vectors, counts = embedder.encode(TEXTS)
    assert embedder.model == "all-MiniLM-L6-v2" and embedder.provider == "local"
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again, _ = embedder.encode(TEXTS)
    np.testing.assert_array_equal(vectors, again)
    assert embedder.native_dim == 384 and embedder.dim == 384 and embedder.max_tokens == 256
    assert embedder.sha256 == model_files.MODEL_SHA256
    assert counts.tolist() == np.minimum(embedder.count_tokens(TEXTS), 256).tolist()


def test_similar_sentences_score_higher_than_unrelated(embedder):
    v, _ = embedder.encode(TEXTS)
    late_parcel, late_parcel_2, plants, grinder = v[0], v[2], v[3], v[4]
    assert cos(late_parcel, late_parcel_2) > 0.6
    assert cos(late_parcel, late_parcel_2) > cos(late_parcel, plants) + 0.3
    assert cos(late_parcel, late_parcel_2) > cos(late_parcel, grinder) + 0.3


def test_batch_equals_one_by_one_in_original_order(embedder):
    batch, _ = embedder.encode(TEXTS)
    singles = np.stack([embedder.encode([t])[0][0] for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    # Many rows of mixed lengths span several sub-batches; the order must still be restored.
    many = [TEXTS[i % 5] + f" Number {i}." * (i % 7) for i in range(90)]
    vectors, _ = embedder.encode(many)
    for i in (0, 1, 37, 74, 89):
        np.testing.assert_allclose(vectors[i], embedder.encode([many[i]])[0][0], atol=1e-5)


def test_embed_is_async_and_reports_real_tokens(embedder):
    texts = [f"Sentence number {i} about shipping delays and refunds." for i in range(200)]

    async def run() -> tuple[EmbeddingResult, int]:
        task = asyncio.ensure_future(embedder.embed(texts))
        ticks = 0
        while not task.done():  # the loop keeps turning while the model runs in its thread
            ticks += 1
            await asyncio.sleep(0)
        result = await task
        await embedder.aclose()
        return result, ticks

    result, ticks = asyncio.run(run())
    assert ticks > 10
    assert result.vectors.shape == (200, 384)
    assert result.prompt_tokens == int(embedder.count_tokens(texts).sum())
    np.testing.assert_allclose(result.vectors, embedder.encode(texts)[0], atol=1e-6)


def test_count_tokens_and_truncate(embedder):
    counts = embedder.count_tokens(["", "hello world", "antidisestablishmentarianism " * 200])
    assert counts.dtype == np.int64
    assert counts[0] == 2 and counts[1] == 4 and counts[2] > 256  # [CLS] ... [SEP], no truncation
    long_text = "Unbelievably, the refrigerator's compressor failed again. " * 40
    for limit in (3, 10, 77, 256):
        cut = embedder.truncate(long_text, limit)
        assert long_text.startswith(cut)
        assert embedder.count_tokens([cut])[0] <= limit
        assert embedder.count_tokens([cut])[0] >= limit - 3  # whole tokens kept, nearly full
    assert embedder.truncate("short text", 256) == "short text"
    # Truncating to the model limit gives the same vector as the model's own truncation.
    cut = embedder.truncate(long_text, 256)
    np.testing.assert_allclose(embedder.encode([cut])[0], embedder.encode([long_text])[0], atol=1e-5)


def test_dimensions_truncate_and_renormalise(embedder):
    full, _ = embedder.encode(TEXTS)
    short = LocalEmbedder(dimensions=64)
    assert short.dim == 64 and short.native_dim == 384
    vectors, _ = short.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    for bad in (0, -1, 385):
        with pytest.raises(ConfigError, match="dimensions"):
            LocalEmbedder(dimensions=bad)


def test_pinned_sha256_mismatch_is_a_config_error(monkeypatch):
    monkeypatch.setattr(model_files, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match=r"sha256 of .*model\.onnx"):
        LocalEmbedder()
    monkeypatch.undo()
    monkeypatch.setattr(model_files, "TOKENIZER_SHA256", "f" * 64)
    with pytest.raises(ConfigError, match=r"sha256 of .*tokenizer\.json"):
        LocalEmbedder()


def test_custom_path_matches_the_embedded_model(embedder, model_copy):
    custom = LocalEmbedder(path=str(model_copy), threads=1)
    assert custom.model == model_copy.name
    assert custom.native_dim == 384 and custom.max_tokens == 128  # from the tokenizer's own truncation
    assert custom.sha256 == embedder.sha256
    short = TEXTS[:5]
    np.testing.assert_allclose(custom.encode(short)[0], embedder.encode(short)[0], atol=1e-5)


def test_custom_path_reads_sentence_transformers_configs(embedder, tmp_path, model_copy):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").symlink_to(model_copy / "model.onnx")
    (tmp_path / "tokenizer.json").symlink_to(model_copy / "tokenizer.json")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True})
    )
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    )
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 200}))
    custom = LocalEmbedder(path=str(tmp_path))
    assert custom.max_tokens == 200 and not custom.normalized
    cls_vectors, _ = custom.encode(TEXTS[:3])
    assert not np.allclose(np.linalg.norm(cls_vectors, axis=1), 1.0, atol=1e-3)  # no Normalize module
    mean_vectors, _ = embedder.encode(TEXTS[:3])
    assert not np.allclose(cls_vectors / np.linalg.norm(cls_vectors, axis=1, keepdims=True), mean_vectors)
    with pytest.raises(ConfigError, match="max_tokens"):
        LocalEmbedder(path=str(tmp_path), max_tokens=201)


def test_missing_files_are_config_errors(tmp_path, model_copy):
    with pytest.raises(ConfigError, match="nowhere"):
        LocalEmbedder(path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"no model\.onnx"):
        LocalEmbedder(path=str(tmp_path))
    (tmp_path / "model.onnx").symlink_to(model_copy / "model.onnx")
    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        LocalEmbedder(path=str(tmp_path))
