"""Which version of an input file a run read: its identity, recorded per shard (the daily refresh).

On disk a file is its size and modification time (nanoseconds), or with ``input.identity = "content"``
its size and a digest of its bytes (``digest.py``: for copies that keep the mtime); in a bucket its
size and ETag, listed with the objects (obstore), so a rewrite with the same size is seen. ``restat``
asks again after a file was read, so a file that changed under a run is never committed from a torn
read (a content identity is hashed again only if the file was written since: its ctime moved).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING, Any

from batchembed.fs.location import Location, until_wildcard
from batchembed.input.digest import MEMO, stat_key

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile


def restat(src: SourceFile) -> dict | None:
    """The file's identity now (size and modification time, or size and digest), or None if it cannot be read."""
    try:
        if src.location is None:
            st = os.stat(src.path)
            if src.digest is not None:
                if stat_key(st) == src.stat_key:  # not written since it was hashed
                    return file_identity(src.size, 0, digest=src.digest)
                key, digest = MEMO.digest(str(src.path))
                return file_identity(key[2], 0, digest=digest)
            return file_identity(st.st_size, st.st_mtime_ns)
        if src.etag:
            found = object_etags(src.location, single=True)
            return file_identity(src.size if src.location.key in found else -1, 0, found.get(src.location.key))
        info = src.location.fs.get_file_info(src.location.fs_path)
        return file_identity(info.size or 0, info.mtime_ns or 0)
    except (OSError, ValueError):
        return None


def file_identity(size: int, mtime_ns: int, etag: str | None = None, digest: str | None = None) -> dict:
    """What identifies a version of an input file: size and mtime on disk (or size and the digest of its
    bytes: ``input.identity = "content"``), size and ETag in a bucket."""
    if digest:
        return {"size": size, "xxh3": digest}
    return {"size": size, "etag": etag} if etag else {"size": size, "mtime_ns": mtime_ns}


def known_rows_of(
    known: dict | None, name: str, size: int, mtime_ns: int, etag: str | None = None, digest: str | None = None
) -> int | None:
    """The row count recorded for a file whose identity is unchanged (so it need not be opened)."""
    if not known or name not in known:
        return None
    identity, rows = known[name]
    return rows if identity == file_identity(size, mtime_ns, etag, digest) else None


def object_etags(where: Location, single: bool = False) -> dict[str, str]:
    """ETags of the objects under ``where`` (a file, prefix or glob): {key: etag}; {} where they cannot
    be had (no obstore), and the identity falls back to the last-modified time."""
    try:
        import obstore

        from batchembed.fs.buckets import STORE_ERRORS  # (obstore, the cloud extra: bucket inputs only)
    except ImportError:
        return {}
    key = where.key
    store = bucket_client(dataclasses.replace(where, key=""))
    try:
        if single:
            meta = obstore.head(store, key)
            return {key: _etag(meta["e_tag"])} if meta.get("e_tag") else {}
        prefix = "/".join(part for part in until_wildcard(key.split("/")))
        return {
            meta["path"]: _etag(meta["e_tag"])
            for batch in obstore.list(store, prefix=prefix or None)
            for meta in batch
            if meta.get("e_tag")
        }
    except (*STORE_ERRORS, ValueError):
        return {}


#: Environment variables an obstore client is configured from (endpoint, credentials, region).
_CLIENT_ENV = ("AWS_", "GOOGLE_", "AZURE_")


def bucket_client(root: Location) -> Any:
    """One obstore client per bucket root and environment, kept for the process: the listing of the
    inputs and the identity check before every commit (``restat``) share it instead of configuring a
    new client (credentials, TLS, connection pool) each time."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CLIENT_ENV)))
    return _client(root, env)


@functools.lru_cache(maxsize=16)
def _client(root: Location, env: tuple) -> Any:
    """The client of ``root`` as the environment ``env`` configures it (obstore: the cloud extra)."""
    from batchembed.fs.buckets import connect

    return connect(root)


def _etag(value: str) -> str:
    """An ETag as one form: some stores quote it in HEAD answers and not in listings (Azure)."""
    return value.removeprefix("W/").strip('"')
