"""Decode a whole embeddings answer at once: no Python object per vector beyond its string (base64), or
one conversion of the parsed lists into the matrix (float, ``float_matrix``).

An OpenAI-compatible answer with ``encoding_format = "base64"`` is ~5.5 KB of base64 text per
1024-dim vector. The standard library's decoder (``binascii``, behind ``base64.b64decode``) reads it a
byte at a time, about ten times slower than parsing the JSON around it: the largest item in the profile
of a fast run. Here the answer is parsed once (orjson), every ``embedding`` string is decoded by
pybase64 (SIMD; strict: a character that is not base64, or bad padding, is refused) and the decoded
vectors joined into the bytes of the (n, dim) float32 matrix, one copy.

This is a fast path only. It accepts nothing the general parser would reject: any answer it is
not sure about (another shape, a float answer, a missing or repeated index, a wrong length,
anything but strict base64, non-finite values, odd ``usage``/``model``) gives ``None`` and the caller
runs the general parser, which decides, and raises the precise error where there is one.
"""

from __future__ import annotations

import binascii
from functools import partial
from operator import itemgetter

import numpy as np
import orjson
import pybase64

#: What ``parse_base64_answer`` returns: vectors (n, dim) float32, usage prompt tokens, served model.
Answer = tuple[np.ndarray, int | None, str | None]

_EMBEDDING = itemgetter("embedding")
_INDEX = itemgetter("index")
_DECODE = partial(pybase64.b64decode, validate=True)


def parse_base64_answer(payload: bytes, expected: int, dimensions: int | None) -> Answer | None:
    """The answer's vectors ordered by ``index``, its usage and model; ``None`` when unsure (see module)."""
    if expected < 1 or not _looks_base64(payload):
        return None
    try:
        doc = orjson.loads(payload)
        items = doc["data"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    fields = _fields(items, str) if isinstance(items, list) and len(items) == expected else None
    if fields is None:
        return None
    order, strings = fields
    usage, model = _usage(doc), _model(doc)
    if usage is False or model is False:
        return None
    matrix = _matrix(strings)
    if matrix is None or (dimensions is not None and matrix.shape[1] != dimensions):
        return None
    if order != list(range(expected)):
        index = np.asarray(order, dtype=np.int64)
        if index.min() < 0 or index.max() >= expected or len(np.unique(index)) != expected:
            return None
        out = np.empty_like(matrix)
        out[index] = matrix
        matrix = out
    if not np.isfinite(matrix).all():
        return None
    return matrix, usage, model


def _fields(items: list, kind: type) -> tuple[list[int], list] | None:
    """Each item's ``index`` and ``embedding``, when every item is an object with both, every index an int
    and every embedding a ``kind`` (``str``: base64, ``list``: floats); None otherwise."""
    try:
        order = list(map(_INDEX, items))
        values = list(map(_EMBEDDING, items))
    except (TypeError, KeyError, IndexError):
        return None
    if set(map(type, order)) != {int} or set(map(type, values)) != {kind}:
        return None
    return order, values


def _matrix(strings: list[str]) -> np.ndarray | None:
    """(n, dim) little-endian float32 from base64 strings each holding one whole vector of the same size;
    None when they do not (not base64, sizes that differ or are not whole floats)."""
    try:
        vectors = list(map(_DECODE, strings))
    except (binascii.Error, ValueError):
        return None
    size = len(vectors[0])
    if size == 0 or size % 4 or set(map(len, vectors)) != {size}:
        return None
    return np.frombuffer(b"".join(vectors), dtype=np.dtype("<f4")).reshape(len(vectors), size // 4)


def float_matrix(items: list) -> np.ndarray | None:
    """(n, dim) float32 from a float answer's parsed ``data`` in one conversion, when every item is an
    object whose ``index`` is its position and whose ``embedding`` is a list of numbers, all the same
    length; None when unsure (the caller's item-by-item parser decides, and names what is wrong)."""
    fields = _fields(items, list)
    if fields is None:
        return None
    order, lists = fields
    if order != list(range(len(items))):
        return None
    try:
        matrix = np.array(lists, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        return None
    return matrix if matrix.ndim == 2 and matrix.shape[1] > 0 else None


def _looks_base64(payload: bytes) -> bool:
    """True when the first ``embedding`` value is a string (cheap: a float answer goes the general way)."""
    at = payload.find(b'"embedding"', 0, 4096)
    while at >= 0:  # the first "embedding" may be a value ("object": "embedding"): find the key
        rest = payload[at + 11 : at + 64].lstrip()
        if rest.startswith(b":"):
            return rest[1:].lstrip().startswith(b'"')
        at = payload.find(b'"embedding"', at + 11, 4096)
    return False


def _usage(doc: dict) -> int | bool | None:
    """``usage.prompt_tokens`` (else ``total_tokens``, all Voyage reports) when an integer, None when
    absent; False when unsure."""
    if "usage" not in doc:
        return None
    usage = doc["usage"]
    if not isinstance(usage, dict):
        return False
    for name in ("prompt_tokens", "total_tokens"):
        value = usage.get(name)
        if value is None:
            continue
        if type(value) is not int:
            return False
        return value
    return None


def _model(doc: dict) -> str | bool | None:
    """The ``model`` the answer names, None when absent; False when unsure."""
    if "model" not in doc:
        return None
    model = doc["model"]
    return model if isinstance(model, str) else False
