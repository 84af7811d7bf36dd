"""The checksum the manifest records for every file of an output, and how a recorded one is checked.

A shard's checksum is taken while it is written and checked when a run opens the output and by
``verify``. It guards against a truncated, corrupted or swapped file, not against an adversary (who could
edit the manifest as well), so it is XXH3-128 (``xxhash``, already used for input identities): ~20 GB/s
here, where sha256 ran at 1.3 GB/s and was 7% of a 100k-row run's CPU. It is recorded with its algorithm,
``xxh3_128:<hex>``; outputs written before recorded a bare sha256 hex, which is still read and checked as
sha256.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import xxhash

#: The algorithm of every checksum written now.
ALGORITHM = "xxh3_128"


class Hasher(Protocol):
    """What ``hashlib`` and ``xxhash`` objects share."""

    def update(self, data, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher() -> Hasher:
    """A hasher for a file being written now (its ``recorded`` form goes in the manifest)."""
    return xxhash.xxh3_128()


def recorded(hasher: Hasher) -> str:
    """The checksum as the manifest records it: ``<algorithm>:<hex>``."""
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def hasher_for(checksum: str) -> Hasher:
    """A fresh hasher of the algorithm ``checksum`` was taken with (a bare hex: sha256, outputs written
    before checksums named their algorithm); ValueError for an algorithm this batchembed does not know."""
    algorithm, sep, _ = checksum.rpartition(":")
    if not sep:
        return hashlib.sha256()
    if algorithm == ALGORITHM:
        return xxhash.xxh3_128()
    raise ValueError(f"checksum algorithm {algorithm!r} is unknown to this batchembed (it writes {ALGORITHM})")


def matches(checksum: str, hasher: Hasher) -> bool:
    """Whether ``hasher`` (from ``hasher_for(checksum)``, fed a file's bytes) gives ``checksum``."""
    return checksum.rpartition(":")[2] == hasher.hexdigest()
