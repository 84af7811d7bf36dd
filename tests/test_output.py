"""The commit protocol in-process: a real local store, real Parquet files, no provider."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.fs.location import locate
from batchembed.input.units import Unit
from batchembed.output.commit import JobOutput
from batchembed.output.layout import FAILED, SUCCESS, TRUNCATED
from batchembed.output.manifest import Manifest
from batchembed.output.store.local import LocalStore
from batchembed.tasks import failure_table

FINGERPRINT = {"model.name": "fake", "files": []}


def _output(tmp_path) -> JobOutput:
    output = JobOutput(LocalStore(locate(str(tmp_path / "out"))), "zstd")
    output.acquire(restart=False)
    output.open(FINGERPRINT, restart=False)
    return output


def _rows(ids) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "score": pa.array([float(i) for i in ids], pa.float32())})


def test_a_unit_counts_once_its_shard_and_side_files_are_recorded(tmp_path):
    output = _output(tmp_path)
    unit = Unit("part-r00000.parquet", None, tokens=42)
    writer = output.unit(unit, {"model": "fake"})
    failed = failure_table(pa.array(["7"]), "in.parquet", np.array([7]), ["too long"])
    cut = pa.table({"id": ["3"], "reason": ["limits.input_tokens"]})
    writer.write(_rows([1, 2, 3]), failed, cut)
    writer.write(_rows([4, 5]), None, None)
    record = output.commit(writer)

    out = tmp_path / "out"
    assert (record.rows, record.failed, record.truncated, record.tokens) == (5, 1, 1, 42)
    name = record.name  # the unit's file of this attempt
    assert name == f"part-r00000-{output.attempt}.parquet" and record.unit == "part-r00000"
    assert pq.read_table(out / name).column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert json.loads(pq.read_schema(out / name).metadata[b"batchembed"])["model"] == "fake"
    assert pq.read_table(out / "_failed" / name).column("error").to_pylist() == ["too long"]
    assert (out / "_truncated" / name).exists()
    assert [s.name for s in Manifest.load(output.store).shards] == [name]
    assert output.committed() == {"part-r00000"}

    outstanding = output.close(lambda n: {"failed_rows_outstanding": n})
    assert outstanding == 1
    assert json.loads((out / "_report.json").read_text()) == {"failed_rows_outstanding": 1}
    assert pq.read_table(out / FAILED).num_rows == 1 and pq.read_table(out / TRUNCATED).num_rows == 1
    output.release()


def test_an_aborted_unit_leaves_nothing_and_orphans_go_at_the_next_open(tmp_path):
    output = _output(tmp_path)
    writer = output.unit(Unit("part-r00000.parquet", None), {})
    writer.write(_rows([1]), None, None)
    writer.abort()
    committed = output.unit(Unit("part-r00001.parquet", None), {})
    committed.write(_rows([2]), None, None)
    kept = output.commit(committed).name
    output.release()
    pq.write_table(_rows([9]), tmp_path / "out" / "part-r00009.parquet")  # a shard no manifest records

    again = _output(tmp_path)
    names = sorted(p.name for p in (tmp_path / "out").glob("part-*"))
    assert names == [kept] and again.committed() == {"part-r00001"}
    assert not again.finished_before()
    again.close(lambda n: {})
    again.complete(lambda line: None)
    assert (tmp_path / "out" / SUCCESS).exists() and Manifest.load(again.store).complete
    assert again.finished_before()
    again.release()
