"""Incomplete multipart uploads a killed writer left behind: found and aborted when the output is resumed.

A shard (and an answer journal's segment) is streamed to its final key as a multipart upload; a
writer killed mid-shard leaves no object, but the store keeps (and bills) the uploaded parts until
the upload is aborted. When a writer opens an output it is the only live writer of the shards it
owns (``store.admission``), and it has started no upload yet: every incomplete upload of those
shards' keys belongs to a dead or fenced-off writer, so it is aborted here. Only the writer's own
shards are touched: a ``--shard I/N`` part aborts the uploads of its own units (the other parts may
be uploading theirs right now).

S3 (and S3-compatible stores) list incomplete uploads (``ListMultipartUploads``, through boto3 from
the cloud extra). Azure discards uncommitted blocks by itself after a week; GCS's resumable
uploads expire after a week too: nothing to do there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchembed.errors import OutputError
from batchembed.fs.location import s3_endpoint
from batchembed.output.layout import JOURNAL_DIR, is_shard


def s3_client(store: Any) -> Any:
    """A boto3 S3 client for the output's store, configured like its obstore client."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise OutputError("cleaning up killed uploads needs boto3: pip install 'batchembed[cloud]'") from None
    opts = store.where.options
    kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint(opts)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if opts.region:
        kwargs["region_name"] = opts.region
    if opts.anonymous:
        from botocore import UNSIGNED

        kwargs["config"] = Config(signature_version=UNSIGNED)
    return boto3.session.Session().client("s3", **kwargs)


def _unit_of(name: str) -> str | None:
    """The shard a key of the output belongs to: the shard itself, or one of its journal's segments."""
    parts = name.split("/")
    if len(parts) == 1 and is_shard(name):
        return name
    if len(parts) == 3 and parts[0] == JOURNAL_DIR and is_shard(parts[1]):
        return parts[1] + ".parquet"
    return None


def abort_stale_uploads(store: Any, owns: Callable[[str], bool] | None = None) -> list[str]:
    """Abort the incomplete multipart uploads of shards (``part-*``) and of their journals' segments
    (``_journal/part-*/``) under the output's prefix, those ``owns(shard file name)`` says are this
    writer's (all of them when None). Returns the aborted keys.

    Best effort: a store that cannot list uploads (or credentials that may not) changes nothing."""
    if store.where.kind != "s3":
        return []
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = store.where.key.rstrip("/") + "/" if store.where.key else ""
    aborted = []
    try:
        client = s3_client(store)
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=store.where.bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                unit = _unit_of(upload["Key"][len(prefix) :])
                if unit is None or (owns is not None and not owns(unit)):
                    continue
                store.fence()  # still this output's writer
                client.abort_multipart_upload(Bucket=store.where.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"][len(prefix) :])
    except (BotoCoreError, ClientError):
        return aborted  # cannot list or abort here: the bucket's lifecycle rule (README) does it
    return aborted
