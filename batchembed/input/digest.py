"""Digests of an input file's bytes: what proves a file unchanged, or only grown, without trusting its mtime.

Three reads, from cheapest to exact, all xxh3-128 (``xxhash``: several GB/s, so a digest costs about
what reading the bytes costs):

* ``probe(src, length)``: a few blocks of the first ``length`` bytes (the first and last 64 KiB and 16
  blocks of 4 KiB spread between). It is what a run reads to see that a CSV or JSON Lines file only
  grew: the bytes the output was made from are still there, so the file is read from where it was.
* ``chain(src, cuts)``: every byte up to the last cut, hashed segment by segment, each segment's digest
  folded into the next (``c_k = xxh3(c_{k-1} + bytes[cut_{k-1}:cut_k])``). A file that grew three times
  has three cuts; the chain of its old bytes is extended at each commit by hashing only the new bytes,
  and checking it reads the file once (a ``touch``: proven unchanged, nothing else read).
* ``whole(src)``: the file's digest (``input.identity = "content"``), computed once per run per version
  of the file (``DigestMemo``: a file's stat, inode and ctime say whether it was written since).

Compressed files are hashed as stored (their compressed bytes).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import pyarrow as pa
import xxhash


class SourceFile(Protocol):
    """What hashing asks of an input file (``files.SourceFile``): where its bytes are."""

    path: Any
    location: Any


#: Bytes read at a time while hashing.
BLOCK = 1 << 20
#: The probe: this many bytes at each end of the prefix, and this many blocks of ``PROBE_BLOCK`` between.
PROBE_EDGE = 64 << 10
PROBE_BLOCK = 4 << 10
PROBE_BLOCKS = 16


def _open(src: SourceFile):
    """The file's stored bytes, random access (local or in a bucket)."""
    if src.location is None:
        return open(src.path, "rb", buffering=0)
    return src.location.fs.open_input_file(src.location.fs_path)


def _read_at(fh, offset: int, size: int) -> bytes:
    fh.seek(offset)
    out = fh.read(size)
    return out.to_pybytes() if hasattr(out, "to_pybytes") else bytes(out)


def probe_spans(length: int) -> list[tuple[int, int]]:
    """The (offset, size) blocks ``probe`` reads of a prefix of ``length`` bytes (merged where they touch)."""
    if length <= 2 * PROBE_EDGE + PROBE_BLOCKS * PROBE_BLOCK:
        return [(0, length)]
    spans = [(0, PROBE_EDGE)]
    step = (length - 2 * PROBE_EDGE) // (PROBE_BLOCKS + 1)
    spans += [(PROBE_EDGE + step * (i + 1), PROBE_BLOCK) for i in range(PROBE_BLOCKS)]
    spans.append((length - PROBE_EDGE, PROBE_EDGE))
    return spans


def probe(src: SourceFile, length: int) -> str | None:
    """Digest of the probe blocks of the file's first ``length`` bytes (and of ``length`` itself); None when
    the file is shorter or cannot be read."""
    try:
        with _open(src) as fh:
            return _probe(fh, length)
    except OSError:
        return None


def _probe(fh, length: int) -> str | None:
    digest = xxhash.xxh3_128(length.to_bytes(8, "little"))
    for offset, size in probe_spans(length):
        block = _read_at(fh, offset, size)
        if len(block) != size:
            return None
        digest.update(block)
    return digest.hexdigest()


def chain(src: SourceFile, cuts: list[int], previous: str | None = None, start: int = 0) -> str | None:
    """The chained digest of the file's bytes up to ``cuts[-1]`` (see the module doc), continuing
    ``previous`` (the chain up to ``start``); None when the file is shorter or cannot be read."""
    try:
        with _open(src) as fh:
            return _chain(fh, cuts, previous, start)
    except OSError:
        return None


def _chain(fh, cuts: list[int], previous: str | None, start: int) -> str | None:
    digest = previous
    fh.seek(start)
    at = start
    for cut in cuts:
        if cut <= at and digest is not None:
            continue
        h = xxhash.xxh3_128(bytes.fromhex(digest) if digest else b"")
        while at < cut:
            block = fh.read(min(BLOCK, cut - at))
            if not len(block):
                return None
            h.update(block)
            at += len(block)
        digest = h.hexdigest()
    return digest


def end_facts(
    src: SourceFile, size: int, *, hashed: bool, previous: str | None = None, start: int = 0, data=None
) -> tuple[bool, str | None, str | None]:
    """What a shard records of a file it read to its end at ``size`` bytes, in one open of the file (none
    when ``data``, its bytes, are given): (its last byte is a line feed, the probe of those bytes, their
    chain digest continuing ``previous`` from ``start`` when ``hashed``). (False, None, None) if unreadable."""
    try:
        with pa.BufferReader(data) if data is not None else _open(src) as fh:
            newline = size > 0 and _read_at(fh, size - 1, 1) == b"\n"
            grows = newline and src.compression is None
            return newline, _probe(fh, size) if grows else None, _chain(fh, [size], previous, start) if hashed else None
    except OSError:
        return False, None, None


def whole(path: str) -> str:
    """xxh3-128 of a local file's bytes."""
    digest = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a local file is written, even by a copy that keeps its mtime (``cp -p``,
    ``rsync -a``, ``touch -r`` all set the ctime to now): device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestMemo:
    """Each local file's content digest, hashed at most once per version of the file in a process."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[int, ...]], str] = {}
        self._lock = threading.Lock()
        self.hashed = 0  # bytes hashed (for tests and benchmarks)

    def digest(self, path: str) -> tuple[tuple[int, ...], str]:
        """(the file's stat key, the digest of its bytes): hashed now unless this version was hashed before.
        A file written while it is hashed is hashed again (its stat differs after the read)."""
        key = stat_key(os.stat(path))
        for _ in range(3):
            with self._lock:
                found = self._known.get((path, key))
            if found is not None:
                return key, found
            found = whole(path)
            after = stat_key(os.stat(path))
            with self._lock:
                self.hashed += key[2]
                if after == key:
                    self._known[(path, key)] = found
                    return key, found
            key = after
        raise OSError(f"{path} kept changing while it was hashed")


#: The one memo of a process: a run and its commands share it (a file is hashed once per version).
MEMO = DigestMemo()
