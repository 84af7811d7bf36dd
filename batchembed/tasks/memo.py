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
from collections import OrderedDict
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


class VectorMemo:
    """Vectors by text key: LRU in memory (``max_bytes``), backed by an optional SQLite file."""

    def __init__(self, max_bytes: int = 64 << 20, cache_path: str | None = None, namespace: str = "") -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
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
            for key in keys:
                vec = self._entries.get(key)
                if vec is not None:
                    # a copy of its own, so that a popular vector does not keep its whole stored block alive
                    vec = self._entries[key] = vec.copy()
                    self._entries.move_to_end(key)
                    found[key] = vec
                else:
                    missing.append(key)
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
            vec = self._entries.get(key)
            if vec is not None:
                self.hits_memory += 1
            return vec

    def recall_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """``recall`` for several keys under one lock: the in-memory vectors found."""
        with self._lock:
            entries = self._entries
            found = {key: entries[key] for key in entries.keys() & keys} if entries else {}
            self.hits_memory += len(found)
            return found

    def store(self, keys: np.ndarray, vectors: np.ndarray, *, copy: bool = True) -> None:
        """Remember ``vectors[i]`` for ``keys[i]``.

        Entries are rows of one block: a copy of ``vectors``, or with ``copy=False`` views of it (the
        caller promises never to change those rows). A block lives while any of its rows is here;
        entries leave in the order they came (a hit is re-kept as a copy of its own), so at most
        one block is ever kept alive by a few rows."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        with self._lock:
            if self.max_bytes > 0 and len(keys):
                rows = list(np.array(vectors, dtype=np.float32, copy=True if copy else None))
                entries = self._entries
                fresh = {key: row for key, row in zip(keys, rows, strict=True) if key not in entries}
                entries.update(fresh)
                self._bytes += len(fresh) * (rows[0].nbytes + 80)
                while self._bytes > self.max_bytes and self._entries:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= old.nbytes + 80
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
