"""Buckets through obstore (S3, GCS, Azure Blob): connecting with the job's ``[storage]`` settings and the
environment's credentials, and what its errors mean (not found, a missing bucket, a message without a
secret). Shared by the inputs (ETags) and the output store; obstore is the cloud extra, imported here
once (a clear error when it is missing)."""

from __future__ import annotations

import os
from typing import Any

from batchembed.errors import ConfigError, redact
from batchembed.fs.location import Location, register_cloud_secrets, s3_endpoint

try:
    import obstore as _obstore_module
except ImportError:  # the cloud extra is not installed: obstore_module() says so when an object store is used
    _obstore_module = None

#: What obstore raises for a missing object (a builtin FileNotFoundError or its own NotFoundError).
NOT_FOUND: tuple[type[BaseException], ...] = (FileNotFoundError,) + (
    (_obstore_module.exceptions.NotFoundError,) if _obstore_module else ()
)
#: Any failure of a store request.
STORE_ERRORS: tuple[type[BaseException], ...] = (OSError,) + (
    (_obstore_module.exceptions.BaseError,) if _obstore_module else ()
)


def obstore_module():
    """obstore, or a ConfigError saying which extra to install."""
    if _obstore_module is None:
        raise ConfigError("output on an object store needs the cloud extra: pip install 'batchembed[cloud]' (obstore)")
    return _obstore_module


def version_of(meta: dict) -> dict[str, str]:
    """The version a conditional PUT must match: the ETag, plus the generation where the store has
    one (GCS matches on ``ifGenerationMatch``, S3 and Azure on ``If-Match``)."""
    return {k: meta[k] for k in ("e_tag", "version") if meta.get(k)}


#: What S3, GCS and Azure answer (somewhere in the error's body) for a bucket or container that does not exist.
_NO_BUCKET = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist")


def bucket_missing(exc: BaseException) -> bool:
    """Whether a store error says the bucket (container) itself does not exist."""
    text = str(exc)
    return any(marker in text for marker in _NO_BUCKET)


def no_bucket(where: Location, field: str = "output.path") -> str:
    """The message for a bucket that does not exist: its name, not an object's."""
    return (
        f"{field} {where.uri}: the bucket {where.bucket!r} does not exist (or these credentials cannot see it). "
        f"Create it, or correct {field}."
    )


def message(exc: BaseException) -> str:
    """The first line of an obstore/pyarrow error, without any secret."""
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def connect(where: Location) -> Any:
    """An obstore store rooted at ``where`` (an output prefix, or an input's), configured from the environment and
    ``[storage]``."""
    obstore_module()  # a clear error if the cloud extra is missing
    from obstore.store import from_url

    register_cloud_secrets()
    opts = where.options
    config: dict[str, Any] = {}
    client: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if where.kind == "s3":
        url = f"s3://{where.bucket}/{where.key}"
        endpoint = s3_endpoint(opts)
        if endpoint:
            config["endpoint"] = endpoint
            client["allow_http"] = endpoint.startswith("http://")
        if opts.region:
            config["region"] = opts.region
        if opts.anonymous:
            config["skip_signature"] = True
        if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID") and not opts.anonymous:
            kwargs["credential_provider"] = _profile_credentials()
    elif where.kind == "gcs":
        url = f"gs://{where.bucket}/{where.key}"
        if opts.anonymous:
            config["skip_signature"] = True
    else:
        url = f"az://{where.bucket}/{where.key}"
        if where.account:
            config["account_name"] = where.account
        if opts.endpoint:
            config["endpoint"] = opts.endpoint
            client["allow_http"] = opts.endpoint.startswith("http://")
        if opts.anonymous:
            config["skip_signature"] = True
    try:
        return from_url(url, config=config or None, client_options=client or None, **kwargs)
    except (*STORE_ERRORS, ValueError, TypeError) as exc:
        raise ConfigError(f"output.path {where.uri}: {message(exc)}") from None


def _profile_credentials():
    """AWS_PROFILE (shared config/credentials files, SSO) through boto3, which resolves profiles."""
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise ConfigError("AWS_PROFILE needs boto3 to read the profile: pip install 'batchembed[cloud]'") from None
    return Boto3CredentialProvider(boto3.Session())
