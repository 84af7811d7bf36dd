"""Work units and chunks: every row exactly once, groups never split, resume reproduces the same units."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchembed.checkpoint import Manifest, ShardRecord
from batchembed.sources import discover
from batchembed.units import iter_chunks


def _units(chunks):
    """[(name, start, end, rows)] per unit, checking chunk order and flags on the way."""
    units, rows = [], []
    current = None
    for chunk in chunks:
        n = chunk.table.num_rows
        if current is None:
            current = chunk.unit
            assert chunk.first_row == current.start
        assert chunk.unit is current
        rows.extend(chunk.table.column("row").to_pylist())
        if chunk.last:
            units.append((current.name, current.start, current.end, current.eof))
            assert current.end == chunk.first_row + n
            current = None
    assert current is None
    return units, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=st.lists(st.integers(min_value=1, max_value=30), min_size=0, max_size=25),
    shard_rows=st.integers(min_value=1, max_value=60),
    chunk_rows=st.integers(min_value=1, max_value=40),
    row_group=st.integers(min_value=1, max_value=50),
    grouped=st.booleans(),
    csv=st.booleans(),
    done_mask=st.lists(st.booleans(), min_size=0, max_size=40),
)
def test_walk_covers_rows_once_keeps_groups_and_resumes_identically(
    tmp_path_factory, runs, shard_rows, chunk_rows, row_group, grouped, csv, done_mask
):
    keys = [f"q{i}" for i, n in enumerate(runs) for _ in range(n)]
    table = pa.table({"row": pa.array(range(len(keys)), pa.int64()), "key": pa.array(keys, pa.string())})
    d = tmp_path_factory.mktemp("walk")
    if csv:
        pacsv.write_csv(table, d / "in.csv")
        path = d / "in.csv"
    else:
        pq.write_table(table, d / "in.parquet", row_group_size=row_group)
        path = d / "in.parquet"
    sources = discover(str(path))
    group = "key" if grouped else None
    cols = ["row", "key"]

    units, rows = _units(iter_chunks(sources, Manifest({}), cols, shard_rows, chunk_rows, group))

    assert [int(r) for r in rows] == list(range(len(keys)))
    assert [u[0] for u in units] == [f"part-{i:05d}.parquet" for i in range(len(units))]
    for (_, start, end, _), nxt in zip(units, [*units[1:], None], strict=False):
        assert end - start >= 1
        if nxt is not None:
            assert nxt[1] == end
        if grouped and end < len(keys):
            assert keys[end] != keys[end - 1]  # no group straddles two units
        if not grouped:
            assert end - start == shard_rows or end == len(keys)
    if units:
        assert units[-1][2] == len(keys) and units[-1][3] is True

    # commit some units, walk again: exactly the others, same names and ranges
    committed = [u for u, done in zip(units, done_mask, strict=False) if done]
    manifest = Manifest({})
    for name, start, end, eof in committed:
        manifest.shards.append(
            ShardRecord(name, "range", sources[0].name, start, end, eof, end - start, 0, None, 0, "", 0)
        )
    again, rows2 = _units(iter_chunks(sources, manifest, cols, shard_rows, chunk_rows, group))
    assert [u[:3] for u in again] == [u[:3] for u in units if u not in committed]
    assert sorted(int(r) for r in rows2) == [r for u in again for r in range(u[1], u[2])]
