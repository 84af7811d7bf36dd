"""The refresh's on-disk key index (``output/key_index.py``): every key added is found at its location,
whatever the partitioning, with duplicate keys and keys sharing their high half; no other key is."""

from __future__ import annotations

import numpy as np
import pytest

from batchembed.output import key_index
from batchembed.output.key_index import MISSING, KeyIndex


@pytest.mark.parametrize("rows", [0, 1, 169, 170, 171, 5_000, 120_000])
@pytest.mark.parametrize("partition_bytes", [4096, 1 << 20, 32 << 20])
def test_every_key_is_found_where_it_lives_and_no_other(monkeypatch, rows, partition_bytes):
    monkeypatch.setattr(key_index, "PARTITION_BYTES", partition_bytes)
    rng = np.random.default_rng(rows)
    keys = rng.integers(0, 2**64 - 1, size=(rows, 2), dtype=np.uint64)
    if rows > 10:
        keys[5] = keys[3]  # the same text in two rows: either location is right
        keys[7:10, 0] = keys[8, 0]  # different keys sharing their first 8 bytes
    at = rng.permutation(rows).astype(np.uint64)
    index = KeyIndex(rows)
    for a in range(0, rows, 7_000):  # shard by shard
        index.add(keys[a : a + 7_000], at[a : a + 7_000])
    index.finish()
    assert index.rows == rows
    found = index.find(keys)
    same = np.ones(rows, bool)
    if rows > 10:
        same[[3, 5]] = False
        assert {int(found[3]), int(found[5])} <= {int(at[3]), int(at[5])}
    assert np.array_equal(found[same], at[same])
    fresh = rng.integers(0, 2**64 - 1, size=(500, 2), dtype=np.uint64)
    if rows > 10:
        fresh[0, 0] = keys[8, 0]  # a new key with a held key's first half
    assert (index.find(fresh) == MISSING).all()
    assert index.memory_bytes <= 8 * (rows // key_index.BLOCK + 1)
    index.close()
