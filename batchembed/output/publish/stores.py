"""Where a Delta table lives, in delta-rs' terms: the table URI and its ``storage_options``.

delta-rs talks to object stores through its own client (Rust ``object_store``), not through the
pyarrow filesystems of ``location``. This module translates a batchembed :class:`Location` (and the
``[storage]`` settings it carries: endpoint, region, anonymous) into what delta-rs wants. Credentials
are never put into the options: delta-rs reads them from the environment itself (``AWS_*``,
``AZURE_STORAGE_*``, ``GOOGLE_APPLICATION_CREDENTIALS``), so the dict returned here holds nothing
secret and may be logged.
"""

from __future__ import annotations

import os

from batchembed.errors import ConfigError
from batchembed.fs.location import Location, s3_endpoint


def table_uri(location: Location) -> str:
    """The URI delta-rs opens for the table rooted at ``location`` (the output directory or prefix).

    Local paths become absolute (the log records absolute locations in its commit info); ``gcs://``
    becomes ``gs://`` and Azure URIs ``az://CONTAINER/PATH`` (the account travels in the options).
    """
    if location.is_local:
        return os.path.abspath(location.key)
    scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[location.kind]
    return f"{scheme}://{location.bucket}/{location.key}" if location.key else f"{scheme}://{location.bucket}"


def delta_storage_options(location: Location) -> dict[str, str]:
    """delta-rs ``storage_options`` for ``location``: endpoint, region, plain HTTP, anonymous access.

    Only what ``[storage]`` (or the environment's endpoint/region variables) says is translated;
    credentials stay in the environment, where delta-rs finds them. Raises ``ConfigError`` for a
    setting delta-rs cannot honour (a custom GCS endpoint), so a caller that asks at the start of a
    run learns it before anything is spent.
    """
    options = location.options
    if location.is_local:
        return {}
    if location.kind == "s3":
        found: dict[str, str] = {}
        endpoint = s3_endpoint(options)
        if endpoint:
            found["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.lower().startswith("http://"):
                found["AWS_ALLOW_HTTP"] = "true"
        region = options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            found["AWS_REGION"] = region
        if options.anonymous:
            found["AWS_SKIP_SIGNATURE"] = "true"
        return found
    if location.kind == "gcs":
        if options.endpoint or os.environ.get("STORAGE_EMULATOR_HOST"):
            raise ConfigError(
                "storage.endpoint: the Delta table on gs:// cannot use a custom endpoint (delta-rs talks to "
                "Google Cloud Storage only); remove the endpoint or write the output elsewhere"
            )
        return {"GOOGLE_SKIP_SIGNATURE": "true"} if options.anonymous else {}
    found = {}
    env = os.environ
    account = location.account or env.get("AZURE_STORAGE_ACCOUNT_NAME") or env.get("AZURE_STORAGE_ACCOUNT")
    if account:
        found["AZURE_STORAGE_ACCOUNT_NAME"] = account
    if options.endpoint:  # e.g. Azurite: http://127.0.0.1:10000/devstoreaccount1
        found["AZURE_STORAGE_ENDPOINT"] = options.endpoint.rstrip("/")
        if options.endpoint.lower().startswith("http://"):
            found["AZURE_ALLOW_HTTP"] = "true"
    if options.anonymous:
        found["AZURE_SKIP_SIGNATURE"] = "true"
    return found
