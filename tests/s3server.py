"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.serverprocess import ServerProcess

#: Credentials the tests hand the child processes; every output is scanned for them.
ACCESS_KEY_ID = "AKIATESTKEYID7QX5ZR2"
SECRET_ACCESS_KEY = "sEcReT/pa55-Zq8WnL3vX0tYb9Kd4MuHj6Gf2Rc1"


class MotoServer(ServerProcess):
    """``moto_server -H 127.0.0.1 -p PORT`` as a child process, plus a boto3 client to inspect buckets."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        exe = Path(sys.executable).with_name("moto_server")
        self.launch([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], "moto_server")
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name="us-east-1",
        )
        return self

    def env(self) -> dict[str, str]:
        """What a child needs to reach this server through the standard AWS variables."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # --------------------------------------------------------------------------- buckets

    def new_bucket(self) -> str:
        name = f"bkt-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_table(self, bucket: str, key: str, table: pa.Table, row_group_size: int = 100) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=row_group_size)
        self.put(bucket, key, buf.getvalue())

    def get(self, bucket: str, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def table_keys(self, bucket: str, prefix: str) -> list[str]:
        """The keys of the files the Delta table at ``prefix`` names now, in shard order."""
        from deltalake import DeltaTable

        options = {**self.env(), "AWS_ALLOW_HTTP": "true"}
        options.pop("AWS_EC2_METADATA_DISABLED")
        uris = DeltaTable(f"s3://{bucket}/{prefix}", storage_options=options).file_uris()
        return sorted(u.removeprefix(f"s3://{bucket}/") for u in uris)

    def read_output(self, bucket: str, prefix: str, ids_as_text: bool = False) -> pa.Table:
        """All shards under ``prefix``, in shard order (``ids_as_text``: CSV and Parquet inputs mixed)."""
        keys = [k for k in self.keys(bucket, prefix + "/") if k.rsplit("/", 1)[-1].startswith("part-")]
        if self.keys(bucket, prefix + "/_delta_log/"):
            keys = self.table_keys(bucket, prefix)  # replaced files stay a while beside the table's own
        tables = [pq.read_table(io.BytesIO(self.get(bucket, k))) for k in keys]
        if ids_as_text:
            tables = [
                t.set_column(t.schema.get_field_index("id"), "id", t.column("id").cast(pa.string())) for t in tables
            ]
        return pa.concat_tables(tables) if tables else pa.table({})
