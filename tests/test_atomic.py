"""The one atomic-write path (``batchembed.fs.atomic``) on real files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.fs.atomic import TMP_SUFFIX, atomic_path, temp_path, write_atomic
from batchembed.fs.location import locate
from batchembed.output.store.local import LocalStore


def test_write_atomic_creates_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "doc.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]


def test_the_hook_runs_with_the_new_bytes_durable_in_the_temp_file_and_the_old_file_still_in_place(tmp_path):
    target = tmp_path / "_manifest.json"
    target.write_bytes(b"old")
    seen = []
    write_atomic(
        target, b"new", before_replace=lambda: seen.append((target.read_bytes(), temp_path(target).read_bytes()))
    )
    assert seen == [(b"old", b"new")]
    assert target.read_bytes() == b"new"
    assert temp_path(target).name == "_manifest.json" + TMP_SUFFIX
    assert not temp_path(target).exists()


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "part-00000.parquet"
    target.write_bytes(b"committed")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"committed"
    assert not temp_path(target).exists()


def test_a_failing_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"x")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert not temp_path(target).exists()
    assert (target / "inside").read_bytes() == b"x"


def test_streaming_writers_publish_through_the_temp_path(tmp_path):
    target = tmp_path / "table.parquet"
    table = pa.table({"id": ["a", "b"]})
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
        assert not target.exists()  # invisible until complete
    assert pq.read_table(target).equals(table)


def test_the_local_store_and_its_shard_writer_go_through_the_same_path(tmp_path):
    store = LocalStore(locate(str(tmp_path / "out")))
    store.prepare()
    store.write_bytes("_failed/part-00000.parquet", b"rows")
    writer = store.shard_writer("part-00000.parquet", pa.schema([("id", pa.string())]), "snappy")
    assert writer.tmp == temp_path(tmp_path / "out" / "part-00000.parquet")
    writer.write(pa.table({"id": ["a"]}))
    written = writer.commit()
    assert written.rows == 1 and not writer.tmp.exists()
    assert store.read_bytes("_failed/part-00000.parquet") == b"rows"
    assert store.list_names() == ["_failed/part-00000.parquet", "part-00000.parquet"]
