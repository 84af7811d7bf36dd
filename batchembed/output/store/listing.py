"""The size of every file of an output from one listing: what ``status`` checks recorded shards against.

One listing (a directory walk, or one paginated LIST of the prefix) instead of a HEAD per shard, so
checking that every shard the manifest records is still there, whole, stays cheap for thousands of
shards in a bucket.
"""

from __future__ import annotations

import os

from batchembed.output.layout import LEASE_DIR
from batchembed.output.store.base import OutputStore
from batchembed.output.store.local import LocalStore


def listed_sizes(store: OutputStore) -> dict[str, int]:
    """{relative name: size in bytes} of every file of the output (the lease files left out)."""
    if isinstance(store, LocalStore):
        return _local_sizes(str(store.directory))
    from batchembed.fs.buckets import STORE_ERRORS, obstore_module  # (obstore, the cloud extra: buckets only)

    try:
        found = obstore_module().list(store.client).collect()
    except STORE_ERRORS as exc:
        raise store._fail("list", "", exc) from None
    return {m["path"]: int(m["size"]) for m in found if not m["path"].startswith(LEASE_DIR + "/")}


def _local_sizes(root: str) -> dict[str, int]:
    sizes = {}
    for directory, subdirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        if rel == LEASE_DIR:
            subdirs.clear()
            continue
        for name in files:
            key = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            try:
                sizes[key] = os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue  # removed while listed
    return sizes
