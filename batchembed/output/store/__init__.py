"""Output stores: where shards, the manifest and the run's lock live.

:class:`~batchembed.output.store.base.OutputStore` is the seam: write a shard, replace the manifest,
list what is there, delete what the manifest does not record, write ``_SUCCESS`` and the small
files, read them back, and take the one-writer lock. :mod:`.local` keeps today's protocol on a
local disk (temp file, fsync, rename; an ``flock``); :mod:`.objects` is the object-store protocol
(write at the final key, conditional manifest replace, a lease with fencing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchembed.fs.location import Location, StorageOptions, locate
from batchembed.output.store.local import LocalStore

if TYPE_CHECKING:
    from batchembed.job.config import JobConfig
    from batchembed.output.store.base import OutputStore


def storage_options(job: JobConfig) -> StorageOptions:
    """The job's ``[storage]`` settings as location options."""
    return StorageOptions(job.storage.endpoint, job.storage.region, job.storage.anonymous)


def output_location(job: JobConfig) -> Location:
    """Where the job's output goes."""
    return locate(job.output.path, storage_options(job), "output.path")


def open_store(job: JobConfig) -> OutputStore:
    """The output store of ``job`` (nothing is created or locked yet)."""
    where = output_location(job)
    if where.is_local:
        return LocalStore(where)
    from batchembed.output.store.objects import ObjectStore  # (obstore, the cloud extra: only for buckets)

    return ObjectStore(where, lease_seconds=job.storage.lease_seconds)
