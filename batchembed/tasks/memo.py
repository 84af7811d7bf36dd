"""Never pay for the same text twice: a bounded in-memory memo plus an optional on-disk cache.

Keys are 16-byte blake2b digests of (model namespace, final text). The in-memory part is an LRU
bounded in bytes, so duplicates anywhere near each other in a job are embedded once; the optional
SQLite cache (``[cache] path``) keeps every vector across runs, so re-embedding a corpus with a few
changed rows only pays for the changes. SQLite is in the standard library, transactional, and safe
against a crash mid-write (WAL journal).
"""

from __future__ import annotations

import errno
import hashlib
import sqlite3
import threading
from collections import deque
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa

from batchembed.errors import ConfigError


def text_keys(texts: list[str], namespace: bytes = b"") -> np.ndarray:
    """16-byte digest per text (an object array of bytes)."""
    key = namespace[:64]
    blake2b = hashlib.blake2b
    out = np.empty(len(texts), dtype=object)
    out[:] = [blake2b(text.encode("utf-8"), digest_size=16, key=key).digest() for text in texts]
    return out


#: Pair keys are keyed apart from text keys: a pair never takes a text's key.
PAIR_KEY = b"batchembed-pair"


def pair_keys(queries: list[str], documents: list[str]) -> np.ndarray:
    """16-byte digest per (query, document) pair (an object array of bytes): the query's length, the
    query, the document, so no two pairs share the bytes hashed."""
    blake2b = hashlib.blake2b
    out = np.empty(len(documents), dtype=object)
    out[:] = [
        blake2b(
            len(q.encode("utf-8")).to_bytes(8, "little") + q.encode("utf-8") + d.encode("utf-8"),
            digest_size=16,
            key=PAIR_KEY,
        ).digest()
        for q, d in zip(queries, documents, strict=True)
    ]
    return out


def key_array(keys: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Keys (an object array of 16-byte digests) as one Arrow ``binary(16)`` column, built from one
    joined buffer rather than key by key (the journal writes one per request)."""
    raw = b"".join(keys)
    if len(raw) != 16 * len(keys):
        raise ValueError("memo keys must be 16 bytes each")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(raw)])


class _Block:
    """Vectors stored together (one answer's matrix, or a copy): rows of it are the memo's entries."""

    __slots__ = ("keys", "nbytes", "vectors")

    def __init__(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.keys = keys
        self.vectors = vectors
        self.nbytes = vectors.nbytes + _ENTRY_BYTES * len(keys)


#: What an entry costs beside its vector (dict slot, key, the tuple pointing into its block), roughly.
_ENTRY_BYTES = 80


class VectorMemo:
    """Vectors by text key: in memory (``max_bytes``, oldest blocks leave first), backed by an optional
    SQLite file.

    The in-memory part stores whole blocks (an answer's matrix, kept as it is) and maps each key to its
    block and row, so storing an answer costs a few dict updates done in C, however many vectors it has
    (it runs for every answer). A hit is kept again as a copy of its own at the young end, so a popular
    text outlives the blocks around it without keeping them alive."""

    def __init__(self, max_bytes: int = 64 << 20, cache_path: str | None = None, namespace: str = "") -> None:
        self.max_bytes = max_bytes
        self._entries: dict[bytes, tuple[_Block, int]] = {}
        self._blocks: deque[_Block] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._namespace = namespace
        self.hits_memory = 0
        self.hits_cache = 0
        if cache_path:
            self._open(Path(cache_path))

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS vectors (ns TEXT, key BLOB, vec BLOB, PRIMARY KEY (ns, key))")
        except sqlite3.Error as exc:
            raise ConfigError(f"cache.path: cannot open {path} as a cache: {exc}") from None
        self._db = db
        self._path = path

    def lookup(self, keys: np.ndarray) -> dict[bytes, np.ndarray]:
        """The vectors known for ``keys`` (memory first, then the cache file)."""
        found: dict[bytes, np.ndarray] = {}
        missing = []
        with self._lock:
            entries = self._entries
            for key in keys:
                entry = entries.get(key)
                if entry is not None:
                    found[key] = entry[0].vectors[entry[1]]
                else:
                    missing.append(key)
            if found:  # kept again, young, as copies of their own
                hits = list(found)
                copies = np.array([found[k] for k in hits], dtype=np.float32)
                found = dict(zip(hits, copies, strict=True))
                self._add(hits, copies, fresh=False)
            self.hits_memory += len(found)
            if self._db is not None and missing:
                for start in range(0, len(missing), 500):
                    part = missing[start : start + 500]
                    marks = ",".join("?" * len(part))
                    rows = self._db.execute(
                        f"SELECT key, vec FROM vectors WHERE ns = ? AND key IN ({marks})", [self._namespace, *part]
                    ).fetchall()
                    for key, blob in rows:
                        found[key] = np.frombuffer(blob, dtype="<f4")
                        self.hits_cache += 1
        return found

    def recall(self, key: bytes) -> np.ndarray | None:
        """The in-memory vector for one key, if any (no file access: cheap enough for the event loop)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self.hits_memory += 1
            return entry[0].vectors[entry[1]]

    def recall_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """``recall`` for several keys under one lock: the in-memory vectors found."""
        with self._lock:
            entries = self._entries
            if not entries or entries.keys().isdisjoint(keys):
                return {}
            found = {key: entries[key][0].vectors[entries[key][1]] for key in entries.keys() & keys}
            self.hits_memory += len(found)
            return found

    def _add(self, keys: list[bytes], vectors: np.ndarray, fresh: bool = True) -> None:
        """One block of entries (lock held); ``fresh``: only keys not here yet get an entry in it."""
        entries = self._entries
        if fresh and not entries.keys().isdisjoint(keys):
            keep = [at for at, key in enumerate(keys) if key not in entries]
            if not keep:
                return
            keys, vectors = [keys[at] for at in keep], vectors[keep]
        block = _Block(keys, vectors)
        n = len(keys)
        entries.update(zip(keys, zip(repeat(block, n), range(n), strict=True), strict=True))
        self._blocks.append(block)
        self._bytes += block.nbytes
        while self._bytes > self.max_bytes and self._blocks:
            old = self._blocks.popleft()
            self._bytes -= old.nbytes
            for key in old.keys:  # its keys leave, unless kept again in a younger block since
                entry = entries.get(key)
                if entry is not None and entry[0] is old:
                    del entries[key]

    def store(self, keys: np.ndarray, vectors: np.ndarray, *, copy: bool = True) -> None:
        """Remember ``vectors[i]`` for ``keys[i]``.

        The entries are rows of one block: a copy of ``vectors``, or with ``copy=False`` the matrix
        itself (the caller promises never to change it). A block lives until the memo is full and it is
        the oldest, so at most ``max_bytes`` of blocks are ever kept alive."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        with self._lock:
            if self.max_bytes > 0 and len(keys):
                block = np.array(vectors, dtype=np.float32, copy=True if copy else None)
                self._add(list(keys), block)
            if self._db is not None:
                rows = [
                    (self._namespace, k, np.asarray(v, dtype="<f4").tobytes())
                    for k, v in zip(keys, vectors, strict=True)
                ]
                try:
                    self._db.execute("BEGIN")
                    self._db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except sqlite3.OperationalError as exc:  # a full disk: one clear line, not a traceback
                    self._db.rollback()
                    code = errno.ENOSPC if "full" in str(exc) else errno.EIO
                    raise OSError(code, str(exc), f"{self._path} (cache.path)") from None

    def close(self) -> None:
        """Close the cache file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
