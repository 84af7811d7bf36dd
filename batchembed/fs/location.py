"""Where data lives: local paths and ``s3://``, ``gs://``, ``az://``/``abfs://`` and ``file://`` URIs.

Every path a job names (``input.path``, ``output.path``) goes through :func:`locate`, which picks a
``pyarrow.fs`` filesystem for its scheme. Reads then go through that filesystem: Parquet with ranged
reads of the row groups it needs (a big file is never downloaded whole), CSV as a stream.

Credentials come only from each cloud's standard chain (``AWS_*`` incl. ``AWS_ENDPOINT_URL`` and
``AWS_PROFILE``; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``); the optional ``[storage]``
table says what the environment cannot (endpoint, region, anonymous access). A URI is never shown
with anything but scheme, bucket and key, so no secret reaches a message.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow.fs as pafs

from batchembed.errors import ConfigError, InputError, register_secret

#: Schemes with their store kind. ``az`` is ours (pyarrow knows ``abfs``/``abfss`` only).
SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


#: Input formats by file suffix. CSV and JSON Lines may also be compressed (``COMPRESSIONS``); Parquet
#: compresses inside, so a ``.parquet.gz`` is not an input.
INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: Compressed-file suffixes and their codec (decompressed while read, as a stream).
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
#: What an input file may be called, for messages.
INPUT_KINDS = ".parquet, .csv, .jsonl or .ndjson (CSV and JSON Lines also as .gz, .zst, .bz2 or .xz)"


def input_kind(name: str) -> tuple[str, str | None] | None:
    """(format, codec or None) of an input file named ``name``, or None if it is not an input file.

    ``corpus.jsonl.gz`` -> ("jsonl", "gzip"); ``part.parquet`` -> ("parquet", None); ``notes.txt`` -> None.
    """
    stem, ext = os.path.splitext(name.lower())
    codec = COMPRESSIONS.get(ext)
    if codec is not None:
        stem, ext = os.path.splitext(stem)
    fmt = INPUT_FORMATS.get(ext)
    if fmt is None or (codec is not None and fmt == "parquet"):
        return None
    return fmt, codec


@dataclass(frozen=True)
class StorageOptions:
    """What ``[storage]`` adds to the environment's own settings (all optional)."""

    endpoint: str | None = None
    region: str | None = None
    anonymous: bool = False


@dataclass(frozen=True)
class Location:
    """A parsed path: its store ``kind`` ("local", "s3", "gcs", "azure"), bucket and key inside it.

    ``uri`` is what messages show (never credentials); ``fs_path`` is the path to hand ``fs``.
    """

    kind: str
    uri: str
    bucket: str  # bucket / container ("" for local)
    key: str  # path inside the bucket without leading or trailing "/" (local: the OS path)
    account: str | None  # Azure storage account, when the URI names it
    options: StorageOptions

    @property
    def is_local(self) -> bool:
        """Whether this is a path on this machine's disk."""
        return self.kind == "local"

    @property
    def fs_path(self) -> str:
        """The path in ``fs``'s own terms ("bucket/key" for object stores)."""
        if self.is_local:
            return self.key
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem serving this location (one per store and options, reused)."""
        return _filesystem(self.kind, self.account, self.options, _filesystem_environment())

    def child(self, name: str) -> Location:
        """The location of ``name`` (a relative key) under this one."""
        name = name.strip("/")
        if self.is_local:
            return Location("local", os.path.join(self.uri, name), "", os.path.join(self.key, name), None, self.options)
        key = f"{self.key}/{name}" if self.key else name
        return Location(self.kind, f"{self.uri.rstrip('/')}/{name}", self.bucket, key, self.account, self.options)

    def __str__(self) -> str:
        return self.uri


def scheme_of(spec: str) -> str | None:
    """The URI scheme of ``spec`` ("s3"), or None for a plain local path (including Windows drives)."""
    head, sep, _ = spec.partition("://")
    if not sep or not head or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return None
    return head.lower()


def locate(spec: str, options: StorageOptions | None = None, field: str = "path") -> Location:
    """Parse a job path or URI; ``ConfigError`` naming ``field`` and the scheme if it is not supported."""
    options = options or StorageOptions()
    scheme = scheme_of(spec)
    if scheme is None:
        return Location("local", spec, "", spec, None, options)
    rest = spec.split("://", 1)[1]
    if scheme == "file":
        return Location("local", rest, "", rest, None, options)
    kind = SCHEMES.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}://" for s in ("s3", "gs", "az", "abfs", "abfss", "file"))
        raise ConfigError(
            f"{field}: unsupported scheme {scheme}:// in {_safe(spec)!r}; supported: {known} or a local path"
        )
    bucket, _, key = rest.partition("/")
    account = None
    if "@" in bucket:  # abfs://container@account.dfs.core.windows.net/path
        bucket, _, host = bucket.partition("@")
        account = host.split(".", 1)[0] or None
    if ":" in bucket or not bucket:
        raise ConfigError(f"{field}: {_safe(spec)!r} names no bucket (expected {scheme}://BUCKET/PATH)")
    key = key.strip("/")
    uri = f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"
    return Location(kind, uri, bucket, key, account, options)


def _safe(spec: str) -> str:
    """A URI without any ``user:password@`` part, for messages."""
    head, sep, rest = spec.partition("://")
    if sep and "@" in rest.split("/", 1)[0] and ":" in rest.split("@", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return head + sep + rest


def s3_endpoint(options: StorageOptions) -> str | None:
    """The S3 endpoint: ``[storage] endpoint``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    return options.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


#: Environment variables holding cloud secrets: scrubbed from every message once a store is used.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)


def register_cloud_secrets() -> None:
    """Make ``errors.redact`` scrub the cloud credentials found in the environment."""
    for name in SECRET_VARIABLES:
        register_secret(os.environ.get(name))


#: What a filesystem is built from besides ``[storage]``: part of its cache key, so a process whose
#: environment points elsewhere (another endpoint, region, account or key) never reuses a filesystem
#: built for the old one.
_FILESYSTEM_VARIABLES = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "STORAGE_EMULATOR_HOST",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
)


def _filesystem_environment() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in _FILESYSTEM_VARIABLES)


@cache
def _filesystem(
    kind: str, account: str | None, options: StorageOptions, environment: tuple[str | None, ...]
) -> pafs.FileSystem:
    """The pyarrow filesystem for ``kind`` (cached per settings and ``environment``, which it reads)."""
    if kind == "local":
        return pafs.LocalFileSystem()
    register_cloud_secrets()
    if kind == "s3":
        kwargs: dict[str, Any] = {"anonymous": options.anonymous}
        endpoint = s3_endpoint(options)
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        region = options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs)
    if kind == "gcs":
        kwargs = {"anonymous": options.anonymous}
        endpoint = options.endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        if endpoint:
            scheme, _, host = endpoint.rpartition("://")
            kwargs.update(endpoint_override=host or endpoint, scheme=scheme or "https")
        return pafs.GcsFileSystem(**kwargs)
    account = account or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get("AZURE_STORAGE_ACCOUNT")
    if not account:
        raise ConfigError(
            "Azure paths need a storage account: use abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH "
            "or set AZURE_STORAGE_ACCOUNT_NAME"
        )
    kwargs = {"account_name": account}
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get("AZURE_STORAGE_KEY")
    if key:
        kwargs["account_key"] = key
    if options.endpoint:  # e.g. Azurite: http://127.0.0.1:10000/devstoreaccount1 (pyarrow wants host:port)
        scheme, _, rest = options.endpoint.rpartition("://")
        host = rest.split("/", 1)[0]
        kwargs.update(blob_storage_authority=host, dfs_storage_authority=host)
        kwargs.update(blob_storage_scheme=scheme or "https", dfs_storage_scheme=scheme or "https")
    return pafs.AzureFileSystem(**kwargs)


@dataclass(frozen=True)
class FoundFile:
    """A file ``list_files`` found: where it is, its name relative to the listing root, size, mtime."""

    location: Location
    name: str
    size: int
    mtime_ns: int


def list_files(where: Location, accept: Callable[[str], object]) -> list[FoundFile]:
    """The files whose key ``accept`` takes (e.g. ``input_kind``) that an object-store file, prefix or
    glob names, sorted by key.

    A prefix means every file under it (recursively); in a glob, ``*`` and ``?`` stay within one
    level of the key and ``**/`` spans levels. Names are relative to the part before the first
    wildcard (a single file: its base name), as for local inputs.
    """
    key, pattern = where.key, None
    if any(ch in key for ch in "*?["):
        pattern = key
        key = "/".join(part for part in _until_wildcard(key.split("/")))
    base = dataclasses.replace(where, key=key)
    fs = where.fs
    try:
        info = fs.get_file_info(base.fs_path)
        if info.type == pafs.FileType.File and pattern is None:
            infos, root = [info], base.fs_path.rsplit("/", 1)[0]
        else:
            infos = fs.get_file_info(pafs.FileSelector(base.fs_path, recursive=True, allow_not_found=True))
            root = base.fs_path
    except (OSError, ValueError) as exc:
        raise InputError(f"input.path {where.uri!r}: cannot list: {first_line(exc)}") from None
    scheme = where.uri.split("://", 1)[0]
    found = []
    for info in sorted(infos, key=lambda x: x.path):
        rel_key = info.path[len(where.bucket) + 1 :]
        if info.type != pafs.FileType.File or not accept(rel_key):
            continue
        if pattern is not None and not glob_match(rel_key, pattern):
            continue
        loc = dataclasses.replace(where, key=rel_key, uri=f"{scheme}://{where.bucket}/{rel_key}")
        name = info.path[len(root) + 1 :] if info.path.startswith(root + "/") else info.base_name
        found.append(FoundFile(loc, name, info.size or 0, info.mtime_ns or 0))
    if not found and _bucket_absent(fs, where.bucket):
        raise InputError(
            f"input.path {where.uri!r}: the bucket {where.bucket!r} does not exist (or these credentials cannot "
            "see it). Correct input.path."
        )
    return found


def until_wildcard(parts: list[str]):
    """The leading parts of a key up to (not including) the first one with a wildcard."""
    return _until_wildcard(parts)


def _bucket_absent(fs: pafs.FileSystem, bucket: str) -> bool:
    """Whether the store says ``bucket`` does not exist (False when it cannot tell)."""
    try:
        return fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (OSError, ValueError):
        return False


def _until_wildcard(parts: list[str]):
    for part in parts:
        if any(ch in part for ch in "*?["):
            return
        yield part


def glob_match(key: str, pattern: str) -> bool:
    """Shell-style match of an object key: ``*`` and ``?`` stay within one level, ``**/`` spans levels."""
    regex, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            regex.append(".*")
            i += 2
        elif pattern[i] == "*":
            regex.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            regex.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            regex.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            regex.append(re.escape(pattern[i]))
            i += 1
    return re.fullmatch("".join(regex), key) is not None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (pyarrow and obstore append long debug dumps)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
