"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: Credentials the tests hand the child processes; every output is scanned for them.
ACCESS_KEY_ID = "AKIATESTKEYID7QX5ZR2"
SECRET_ACCESS_KEY = "sEcReT/pa55-Zq8WnL3vX0tYb9Kd4MuHj6Gf2Rc1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT`` as a child process, plus a boto3 client to inspect buckets."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start-up") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("moto_server did not open its port within 30 s")
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name="us-east-1",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:  # its state is thrown away: no need for a graceful exit
            self.proc.kill()
            self.proc.wait(timeout=30)

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

    def read_output(self, bucket: str, prefix: str, ids_as_text: bool = False) -> pa.Table:
        """All shards under ``prefix``, in shard order (``ids_as_text``: CSV and Parquet inputs mixed)."""
        keys = [k for k in self.keys(bucket, prefix + "/") if k.rsplit("/", 1)[-1].startswith("part-")]
        tables = [pq.read_table(io.BytesIO(self.get(bucket, k))) for k in keys]
        if ids_as_text:
            tables = [
                t.set_column(t.schema.get_field_index("id"), "id", t.column("id").cast(pa.string())) for t in tables
            ]
        return pa.concat_tables(tables) if tables else pa.table({})
