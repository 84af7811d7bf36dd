"""Pack rows into requests under the per-request limits, keeping input order. Pure.

Greedy and contiguous: each batch takes as many of the next rows as fit under ``max_inputs`` and
``max_tokens``. Contiguity keeps results in order for the writer and makes a split (on 413 or a
too-long 400) a simple halving of a range.
"""

from __future__ import annotations

import numpy as np


def pack(token_counts: np.ndarray, max_inputs: int, max_tokens: int) -> list[tuple[int, int]]:
    """Split rows ``0..n`` into contiguous ``(start, end)`` ranges.

    Every range holds at most ``max_inputs`` rows and sums to at most ``max_tokens`` tokens, except
    that a single row over ``max_tokens`` travels alone (the caller truncates or skips such rows
    first; sending it alone lets the server have the last word).
    """
    n = len(token_counts)
    if max_inputs < 1 or max_tokens < 1:
        raise ValueError("limits must be positive")
    cumulative = np.cumsum(np.asarray(token_counts, dtype=np.int64))
    ranges = []
    start = 0
    while start < n:
        base = cumulative[start - 1] if start else 0
        # last index whose running total still fits
        fit = int(np.searchsorted(cumulative, base + max_tokens, side="right"))
        end = min(max(fit, start + 1), start + max_inputs, n)
        ranges.append((start, end))
        start = end
    return ranges


def halves(start: int, end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Split a range of at least two rows into two non-empty halves."""
    if end - start < 2:
        raise ValueError("cannot split a single row")
    mid = (start + end) // 2
    return (start, mid), (mid, end)
