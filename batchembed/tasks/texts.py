"""Turn rows into the exact strings that get embedded: column or template, prefix, blank detection.

Pure and vectorised with pyarrow.compute: no per-row Python on the hot path.
"""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.job.templates import text_fields


def build_texts(batch: pa.RecordBatch | pa.Table, spec: str) -> pa.Array:
    """The text of each row: the column, or the template filled in; null where every source is null."""
    fields = text_fields(spec)
    if fields == [spec] and "{" not in spec:
        texts = as_string(batch.column(spec))
    else:
        pieces: list[pa.Array | str] = []
        for literal, name, _, _ in string.Formatter().parse(spec):
            if literal:
                pieces.append(literal)
            if name is not None:
                pieces.append(as_string(batch.column(name)))
        all_null = None
        for name in fields:
            mask = pc.is_null(batch.column(name))
            all_null = mask if all_null is None else pc.and_(all_null, mask)
        texts = pc.binary_join_element_wise(*pieces, "", null_handling="replace", null_replacement="")
        texts = pc.if_else(all_null, pa.scalar(None, pa.string()), texts)
    return texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts


def add_prefix(texts: pa.Array, prefix: str) -> pa.Array:
    """Prepend ``prefix`` to every text (a no-op for an empty prefix)."""
    return pc.binary_join_element_wise(prefix, texts, "") if prefix else texts


def as_string(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one contiguous ``string`` array (any other type cast to text)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        return column.cast(pa.string())
    if not pa.types.is_string(column.type):
        return pc.cast(column, pa.string())
    return column


def blank_mask(texts: pa.Array) -> np.ndarray:
    """True where a text is null or nothing but whitespace: such rows are never sent."""
    lengths = pc.utf8_length(pc.utf8_trim_whitespace(texts)).fill_null(0)
    return lengths.to_numpy(zero_copy_only=False) == 0
