"""A table's 16-byte keys and where each lives, on disk, found with a few kilobytes of memory per lookup.

The refresh asks "is this text (this pair) already in the output?" for every text it reads; the
output may hold a hundred million rows. Held in memory, their keys would cost 24 bytes a row (2.4 GB
at 100M). Here each key is a 24-byte record (the key as two 64-bit halves, and a 64-bit location)
in one sorted file in the temporary directory, and memory holds only the first key of every block
of records (``BLOCK`` records, one disk page: 8 bytes a block, 4.7 MB at 100M rows, never more than
``MAX_FENCES`` entries); a lookup reads the one block (rarely two) a key can be in, with ``pread``,
so the operating system's page cache, not this process, holds what is read.

Sorting a file larger than memory needs no general external sort here: the keys are hashes, uniform
over their range, so records are first spread by their top bits into ``2**k`` partition files of
about ``PARTITION_BYTES`` each, and each partition, sorted in memory by numpy (by the key's high
half; a lookup looks along equal high halves), is appended in turn: the concatenation is sorted.
Every file is an anonymous temporary file (``tempfile.TemporaryFile``, in ``TMPDIR``): it disappears
with the process, even one killed with SIGKILL.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import IO

import numpy as np

#: One key and where it lives: the key's two little-endian 64-bit halves, then the location.
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("at", "<u8")])
#: Records per block at least: one 4 KiB page.
BLOCK = 4096 // RECORD.itemsize
#: Blocks listed in memory at most (8 MiB of first keys); a larger table gets larger blocks.
MAX_FENCES = 1 << 20
#: About how much of the index one partition holds while it is sorted in memory.
PARTITION_BYTES = 16 << 20
#: Partition files at most (open at once while the index is built).
MAX_PARTITIONS = 256
#: What ``find`` answers for a key the index does not hold.
MISSING = np.uint64(2**64 - 1)


class KeyIndex:
    """Add ``(key, location)`` pairs (``add``), then ``finish`` once, then ``find`` keys (thread-safe)."""

    def __init__(self, expected_rows: int) -> None:
        """``expected_rows``: about how many keys will be added (sizes the partitions; any count works)."""
        wanted = max(1, math.ceil(expected_rows * RECORD.itemsize / PARTITION_BYTES))
        self._bits = min(math.ceil(math.log2(wanted)), int(math.log2(MAX_PARTITIONS)))
        self._parts: list[IO[bytes] | None] = [None] * (1 << self._bits)
        self.rows = 0
        self.per_block = max(BLOCK, math.ceil(expected_rows / MAX_FENCES))
        self._fences = np.zeros(0, np.uint64)
        self._file: IO[bytes] | None = None

    def add(self, keys: np.ndarray, at: np.ndarray) -> None:
        """Add keys (``(n, 2)`` uint64: a 16-byte key's two little-endian halves) living at ``at`` (uint64)."""
        if not len(keys):
            return
        records = np.empty(len(keys), RECORD)
        records["hi"], records["lo"], records["at"] = keys[:, 0], keys[:, 1], at
        if self._bits:
            part = records["hi"] >> np.uint64(64 - self._bits)
            order = np.argsort(part, kind="stable")
            records, part = records[order], part[order]
            bounds = np.searchsorted(part, np.arange(len(self._parts) + 1, dtype=np.uint64))
        else:
            bounds = np.array([0, len(records)])
        for p in range(len(self._parts)):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if a < b:
                if self._parts[p] is None:
                    self._parts[p] = tempfile.TemporaryFile(prefix="batchembed-keys-")  # noqa: SIM115 (kept open)
                self._parts[p].write(records[a:b].tobytes())

    def finish(self) -> None:
        """Sort the added keys into the index file (one partition in memory at a time)."""
        out = tempfile.TemporaryFile(prefix="batchembed-index-")  # noqa: SIM115 (open until ``close``)
        fences = []
        for i, part in enumerate(self._parts):
            if part is None:
                continue
            part.seek(0)
            records = np.fromfile(part, RECORD)
            part.close()
            self._parts[i] = None
            records = records[np.argsort(records["hi"])]  # by the high half: ``_match`` looks along ties
            first = (-self.rows) % self.per_block  # the records that begin a block (of the whole file)
            fences.append(records["hi"][first :: self.per_block].copy())  # not a view: the records go
            out.write(records.tobytes())
            self.rows += len(records)
            del records
        out.flush()
        self._file = out
        self._fences = np.concatenate(fences) if fences else np.zeros(0, np.uint64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The location of each key (``(n, 2)`` uint64), ``MISSING`` where the index does not hold it.

        A key can only be in the blocks whose first key's high half is at most its own and not above
        the next block's: usually one block, two when equal high halves straddle a block boundary."""
        found = np.full(len(keys), MISSING, dtype=np.uint64)
        if not self.rows or not len(keys):
            return found
        hi = np.ascontiguousarray(keys[:, 0])
        first = np.maximum(np.searchsorted(self._fences, hi, "left") - 1, 0)
        last = np.maximum(np.searchsorted(self._fences, hi, "right") - 1, 0)
        order = np.lexsort((last, first))
        lo = np.ascontiguousarray(keys[:, 1])
        fd = self._file.fileno()
        size = self.per_block * RECORD.itemsize
        start = 0
        while start < len(order):
            a, b = int(first[order[start]]), int(last[order[start]])
            end = start + 1
            while end < len(order) and first[order[end]] == a and last[order[end]] == b:
                end += 1
            group = order[start:end]
            records = np.frombuffer(os.pread(fd, (b - a + 1) * size, a * size), RECORD)
            self._match(records, hi[group], lo[group], group, found)
            start = end
        return found

    @staticmethod
    def _match(records: np.ndarray, hi: np.ndarray, lo: np.ndarray, group: np.ndarray, found: np.ndarray) -> None:
        """Fill ``found[group]`` with the locations of the keys (``hi``, ``lo``) that ``records`` hold."""
        rhi, rlo = records["hi"], records["lo"]
        at = np.searchsorted(rhi, hi, "left")
        at_c = np.minimum(at, len(records) - 1)
        same_hi = (at < len(records)) & (rhi[at_c] == hi)
        hit = same_hi & (rlo[at_c] == lo)
        found[group[hit]] = records["at"][at_c[hit]]
        for j in np.flatnonzero(same_hi & ~hit):  # keys sharing their high half: look along them (rare)
            k = int(at[j])
            while k < len(records) and rhi[k] == hi[j]:
                if rlo[k] == lo[j]:
                    found[group[j]] = records["at"][k]
                    break
                k += 1

    def close(self) -> None:
        """Drop the files (they would go with the process anyway)."""
        for part in self._parts:
            if part is not None:
                part.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def memory_bytes(self) -> int:
        """What the index keeps in memory: its list of blocks' first keys."""
        return int(self._fences.nbytes)
