"""What the fake embeddings/rerank server answers: pure functions a test can call to know the output.

Vectors come from :func:`expected_vector`, rerank scores from :func:`expected_score` and token counts
from :func:`token_count`; error bodies have the OpenAI shape; rate-limit headers come in every style
batchembed reads. Nothing here holds state or touches a socket.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import time
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

MAX_DIM = 4096
"""The largest native dimension the fake models are described with (Qwen3-Embedding-8B)."""

EMBEDDING_FIELDS = frozenset(
    {"model", "input", "dimensions", "encoding_format", "user", "normalize", "prompt_template"}
)
"""Request fields a strict (Fireworks-like) server accepts on ``/embeddings``."""

EMBEDDING_SHAPES: dict[str, tuple[frozenset[str], str]] = {
    "openai": (EMBEDDING_FIELDS, "dimensions"),
    "mistral": (
        frozenset({"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}),
        "output_dimension",
    ),
    "voyage": (
        frozenset(
            {"model", "input", "input_type", "truncation", "output_dimension", "output_dtype", "encoding_format"}
        ),
        "output_dimension",
    ),
}
"""Per :attr:`FakeServer.embed_format`: the fields a strict server accepts on ``/embeddings`` and the one
that asks for a vector size (Mistral and Voyage: ``output_dimension``)."""

RERANK_FIELDS = {
    "fireworks": frozenset({"model", "query", "documents", "top_n", "return_documents", "task"}),
    "cohere": frozenset({"model", "query", "documents", "top_n", "max_tokens_per_doc", "priority"}),  # v2
    "jina": frozenset({"model", "query", "documents", "top_n", "return_documents"}),
    "vllm": frozenset({"model", "query", "documents", "top_n", "truncate_prompt_tokens"}),
    "voyage": frozenset({"model", "query", "documents", "top_k", "return_documents", "truncation"}),
    "tei": frozenset({"query", "texts", "return_text", "raw_scores", "truncate", "truncation_direction"}),
}
"""Request fields a strict server accepts on ``/rerank``, per :attr:`FakeServer.rerank_format`."""

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "authentication_error", "invalid_api_key"),
    402: ("Payment required: your account is out of credits.", "billing_error", "insufficient_quota"),
    403: ("You are not allowed to use this model.", "permission_error", None),
    404: ("The model does not exist or you do not have access to it.", "not_found_error", "model_not_found"),
    408: ("Request timed out.", "timeout_error", None),
    409: ("Conflict, please retry.", "conflict_error", None),
    412: ("Precondition failed.", "invalid_request_error", None),
    413: ("payload too large", "invalid_request_error", "payload_too_large"),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    424: ("Model backend failed (out of memory).", "server_error", None),
    429: ("Rate limit reached, please try again later.", "rate_limit_error", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded, please try again later.", "server_error", "overloaded"),
    504: ("Gateway timeout.", "server_error", None),
}


def token_count(text: str) -> int:
    """The fake tokenizer: ``ceil(len(utf8 bytes) / 4) + 1`` tokens for one input."""
    return -(-len(text.encode("utf-8")) // 4) + 1


@functools.lru_cache(maxsize=1 << 15)
def cached_vector(text: str, dim: int) -> np.ndarray:
    """The (read-only, cached) vector of ``text`` at ``dim``: see :func:`expected_vector`."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    # Generator.standard_normal(n) yields the first n values of standard_normal(MAX_DIM): the prefix
    # property that makes "dimensions" truncation consistent (Matryoshka) without drawing MAX_DIM values.
    raw = np.random.default_rng(seed).standard_normal(dim)
    vec = (raw / np.linalg.norm(raw)).astype(np.float32)
    vec.flags.writeable = False
    return vec


@functools.lru_cache(maxsize=1 << 14)
def float_json(text: str, dim: int) -> bytes:
    """The JSON array of ``cached_vector(text, dim)`` (float32 shortest repr, exact round trip)."""
    return orjson.dumps(cached_vector(text, dim), option=orjson.OPT_SERIALIZE_NUMPY)


@functools.lru_cache(maxsize=1 << 14)
def base64_json(text: str, dim: int) -> bytes:
    """The JSON string of the base64 of ``cached_vector(text, dim)`` as little-endian float32."""
    return b'"%s"' % base64.b64encode(cached_vector(text, dim).astype("<f4", copy=False).tobytes())


def expected_vector(text: str, dim: int) -> np.ndarray:
    """The embedding the fake server returns for ``text`` at ``dim`` dimensions.

    float32, L2-normalised, a pure function of ``(text, dim)``. Matryoshka-consistent:
    ``expected_vector(t, d)`` equals the first ``d`` components of ``expected_vector(t, 4096)``
    re-normalised (up to float32 rounding: compare with ``np.allclose(..., atol=1e-6)``). The server
    sends exactly these float32 values, so a client decoding them gets bit-identical arrays.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return cached_vector(text, int(dim)).copy()


def raw_cut_vector(text: str, dims: int, native: int) -> np.ndarray:
    """What a fake with ``cut_unnormalized`` answers at ``dims``: the first ``dims`` components of the
    native unit vector, not normalised again (length below 1)."""
    return cached_vector(text, int(native))[:dims].copy()


def shaped_encoder(fmt: str, native: int, cut_raw: bool, scale: float, zero: set[str]):
    """The JSON of each answer's vector for the fake's shaping knobs (raw cuts, a scale, zero vectors)."""

    def encode(text: str, dims: int) -> bytes:
        vec = raw_cut_vector(text, dims, native) if cut_raw and dims != native else cached_vector(text, dims)
        vec = (vec * np.float32(scale)).astype("<f4")
        if text in zero:
            vec[:] = 0
        if fmt == "float":
            return orjson.dumps(vec, option=orjson.OPT_SERIALIZE_NUMPY)
        return b'"%s"' % base64.b64encode(vec.tobytes())

    return encode


def expected_score(query: str, document: str) -> float:
    """The rerank relevance score of ``document`` for ``query``: a pure function in ``[0, 1)``."""
    digest = hashlib.blake2b(query.encode("utf-8") + b"\x00" + document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class Reply(Exception):
    """Raised while answering a request to answer it with an error status instead."""

    def __init__(self, status: int, message: str | None = None, code: str | None = None, headers=None, limit=None):
        super().__init__(message)
        self.limit = limit  # a 429's limit: "requests" or "tokens"
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body ``{"error": {"message", "type", "param", "code"}}`` for ``status``."""
    default_message, etype, default_code = _ERRORS.get(
        status, (f"HTTP {status}", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message or default_message,
            "type": etype,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def json_bytes(obj: Any) -> bytes:
    """``obj`` as JSON bytes (numpy arrays allowed); bytes pass through as they are."""
    return obj if isinstance(obj, bytes) else orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def fmt_duration(seconds: float) -> str:
    """OpenAI's reset duration format: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_s = f"{rest:.3f}".rstrip("0").rstrip(".") or "0"
    return f"{int(minutes)}m{rest_s}s" if minutes else f"{rest_s}s"


def styled_headers(
    style: str, tpm: int | None, used: int, reset: float, window: float, rpm: int | None = None, requests: int = 0
) -> dict[str, str]:
    """Rate-limit headers of a non-OpenAI ``style`` for a tokens limit ``tpm`` per ``window`` seconds."""
    if style in ("none", "bare") or tpm is None:
        return {}
    remaining = max(0, tpm - used)
    reset_s = str(math.ceil(max(reset, 0.0)))
    if style == "ietf":
        return {
            "RateLimit-Limit": str(tpm),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": reset_s,
            "RateLimit-Policy": f"{tpm};w={window:g}",
        }
    if style == "ietf-structured":
        policies, states = f'"tpm";q={tpm};w={window:g}', f'"tpm";r={remaining};t={reset_s}'
        if rpm is not None:  # both limits: a requests policy too, named by its quota unit
            policies = f'"rpm";q={rpm};w={window:g};qu="requests", ' + policies
            states = f'"rpm";r={max(0, rpm - requests)};t={reset_s}, ' + states
        return {"RateLimit-Policy": policies, "RateLimit": states}
    if style == "x-ratelimit":
        return {
            "X-RateLimit-Limit": str(tpm),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int((time.time() + max(reset, 0.0)) * 1000)),
        }
    if style == "fireworks":
        per_second = tpm / window
        return {
            "x-ratelimit-limit-tokens-prompt": str(int(per_second)),
            "x-ratelimit-over-limit": "yes" if used > tpm else "no",
        }
    raise ValueError(f"unknown rate-limit style {style!r}")


def extract_inputs(body: Any, kind: str, rerank_format: str) -> tuple[list[str], str | None]:
    """The texts of a request (embedding inputs or rerank documents) and the rerank query."""
    if not isinstance(body, dict):
        return [], None
    if kind == "embeddings":
        inp = body.get("input")
        if isinstance(inp, str):
            return [inp], None
        return (strings(inp) if isinstance(inp, list) else []), None
    docs = body.get("texts") if rerank_format == "tei" else body.get("documents")
    query = body.get("query")
    return (strings(docs) if isinstance(docs, list) else []), (query if isinstance(query, str) else None)


def strings(items: Iterable[Any]) -> list[str]:
    """The string items of ``items``."""
    return [x for x in items if isinstance(x, str)]


def make_pool(dim: int, pool: int = 4096, seed: int = 0) -> np.ndarray:
    """The (pool, dim) float32 unit vectors a fake in pool mode (the benchmarks' server) answers with."""
    vecs = np.random.default_rng(seed).standard_normal((pool, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


def pool_vectors(texts: list[str], vectors: np.ndarray) -> np.ndarray:
    """What a fake in pool mode returns for ``texts`` given its pool ``vectors``: entry CRC32(text) mod pool."""
    idx = np.fromiter((zlib.crc32(t.encode("utf-8")) % len(vectors) for t in texts), np.int64, len(texts))
    return vectors[idx]


@functools.lru_cache(maxsize=8)
def pool_fragments(dim: int, pool: int, seed: int, fmt: str) -> list[bytes]:
    """The JSON of each pool vector as sent in ``fmt`` (``float`` or ``base64``), made once per pool."""
    vectors = make_pool(dim, pool, seed)
    if fmt == "float":
        return [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in vectors]
    return [b'"%s"' % base64.b64encode(v.astype("<f4", copy=False).tobytes()) for v in vectors]
