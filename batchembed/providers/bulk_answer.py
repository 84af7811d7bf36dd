"""Decode a whole base64 embeddings answer at once: no Python object per vector.

An OpenAI-compatible answer with ``encoding_format = "base64"`` is ~5.5 KB of base64 text per
1024-dim vector. Parsing it with a JSON library and decoding each string with ``binascii`` costs
~15 µs per vector, all of it holding the GIL on the event loop: the largest item in the
profile of a fast run. Here the answer is read by polars' JSON reader into Arrow columns and the
``embedding`` strings are decoded in one vectorised call, both in native code that releases the
GIL; the decoded values are already one contiguous buffer, which is the (n, dim) float32 matrix
(a read-only view; a copy only when the answer is not in index order).

This is a fast path only. It accepts nothing the general parser would reject: any answer it is
not sure about (another shape, a float answer, a missing or repeated index, a wrong length,
non-finite values, non-canonical base64) gives ``None`` and the caller runs the general parser,
which decides, and raises the precise error where there is one.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow as pa

#: What reading an answer may raise when it is not the shape expected; a polars panic is a
#: BaseException, named here so that the general parser decides rather than the run failing.
_UNSURE = (pl.exceptions.PolarsError, pl.exceptions.PanicException, pa.ArrowException, ValueError, TypeError, KeyError)

#: What ``parse_base64_answer`` returns: vectors (n, dim) float32, usage prompt tokens, served model.
Answer = tuple[np.ndarray, int | None, str | None]


def parse_base64_answer(payload: bytes, expected: int, dimensions: int | None) -> Answer | None:
    """The answer's vectors ordered by ``index``, its usage and model; ``None`` when unsure (see module)."""
    if expected < 1 or not _looks_base64(payload):
        return None
    try:
        doc = pl.read_json(io.BytesIO(payload))
        if doc.height != 1 or not isinstance(doc.schema.get("data"), pl.List):
            return None
        items = doc.get_column("data").explode()
        if items.len() != expected or not isinstance(items.dtype, pl.Struct):
            return None
        fields = items.struct.unnest()
        if fields.schema.get("embedding") != pl.String or fields.schema.get("index") != pl.Int64:
            return None
        index = fields.get_column("index")
        strings = fields.get_column("embedding")
        if index.null_count() or strings.null_count():
            return None
        decoded = strings.str.decode("base64", strict=True).to_arrow()
        usage = _usage(doc)
        model = _model(doc)
    except _UNSURE:
        return None
    if usage is False or model is False:
        return None
    matrix = _matrix(decoded, expected)
    if matrix is None or (dimensions is not None and matrix.shape[1] != dimensions):
        return None
    order = index.to_numpy()
    if not np.array_equal(order, np.arange(expected)):
        if order.min() < 0 or order.max() >= expected or len(np.unique(order)) != expected:
            return None
        out = np.empty_like(matrix)
        out[order] = matrix
        matrix = out
    if not np.isfinite(matrix).all():
        return None
    return matrix, usage, model


def _looks_base64(payload: bytes) -> bool:
    """True when the first ``embedding`` value is a string (cheap: a float answer goes the general way)."""
    at = payload.find(b'"embedding"', 0, 4096)
    while at >= 0:  # the first "embedding" may be a value ("object": "embedding"): find the key
        rest = payload[at + 11 : at + 64].lstrip()
        if rest.startswith(b":"):
            return rest[1:].lstrip().startswith(b'"')
        at = payload.find(b'"embedding"', at + 11, 4096)
    return False


def _matrix(decoded: pa.Array, n: int) -> np.ndarray | None:
    """(n, dim) little-endian float32 from the decoded binaries when they all hold one whole vector size."""
    if isinstance(decoded, pa.ChunkedArray):
        decoded = decoded.combine_chunks()
    decoded = decoded.cast(pa.large_binary()) if decoded.type != pa.large_binary() else decoded
    _, offsets_buf, data_buf = decoded.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[decoded.offset : decoded.offset + n + 1]
    sizes = np.diff(offsets)
    size = int(sizes[0])
    if size == 0 or size % 4 or not (sizes == size).all():
        return None
    raw = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[0] + n * size]
    return raw.view(np.dtype("<f4")).reshape(n, size // 4)  # read-only: a view of the decoded buffer


def _usage(doc: pl.DataFrame) -> int | bool | None:
    """``usage.prompt_tokens`` (else ``total_tokens``, all Voyage reports) when an integer, None when
    absent; False when unsure."""
    usage = doc.schema.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, pl.Struct):
        return False
    names = {f.name: f.dtype for f in usage.fields}
    for name in ("prompt_tokens", "total_tokens"):
        if name in names:
            if not names[name].is_integer():
                return False
            value = doc.get_column("usage").struct.field(name)[0]
            if value is not None:
                return int(value)
    return None


def _model(doc: pl.DataFrame) -> str | bool | None:
    """The ``model`` the answer names, None when absent; False when unsure."""
    dtype = doc.schema.get("model")
    if dtype is None:
        return None
    if dtype != pl.String:
        return False
    return doc.get_column("model")[0]
