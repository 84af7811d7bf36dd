"""The texts ``plan`` has seen job-wide, memory-bounded: 64-bit digests of the task's text keys in sorted numpy
arrays (never a Python set of strings), so each distinct text is counted once, as a run sends it."""

from __future__ import annotations

import numpy as np

#: Digests gathered before they are folded into the sorted job-wide set (bounds memory to the uniques).
COMPACT_EVERY = 1 << 16


class SeenTexts:
    """Job-wide set of 64-bit text digests, memory proportional to the distinct texts.

    A large sorted array plus a small sorted one that is merged in when it grows (like an LSM tree),
    so checking a chunk costs two binary searches rather than a re-sort of everything seen.
    """

    def __init__(self) -> None:
        self._main = np.zeros(0, np.uint64)
        self._recent = np.zeros(0, np.uint64)
        self.tokens = 0

    @staticmethod
    def _isin(sorted_array: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_array, values)
        pos[pos == len(sorted_array)] = 0
        return sorted_array[pos] == values if len(sorted_array) else np.zeros(len(values), bool)

    def first_seen(self, digests: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Mask of ``digests`` (distinct within the call) never seen before; records them."""
        new = ~(self._isin(self._main, digests) | self._isin(self._recent, digests))
        self._recent = np.sort(np.concatenate([self._recent, digests[new]]))
        self.tokens += int(tokens[new].sum())
        if len(self._recent) > COMPACT_EVERY:
            self._main = np.sort(np.concatenate([self._main, self._recent]))
            self._recent = np.zeros(0, np.uint64)
        return new

    def __len__(self) -> int:
        return len(self._main) + len(self._recent)


def text_digests(keys: np.ndarray) -> np.ndarray:
    """64-bit digests of texts from the task's 16-byte text keys (``memo.text_keys``: blake2b)."""
    if not len(keys):
        return np.zeros(0, np.uint64)
    return np.frombuffer(b"".join(keys.tolist()), dtype=np.uint64)[::2].copy()
