"""Work units and chunks: every row exactly once, groups never split, resume reproduces the same units."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchembed.input.chunks import iter_chunks
from batchembed.input.discover import discover
from batchembed.output.manifest import Manifest, ShardRecord


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=4),
    shard_rows=st.integers(min_value=1, max_value=80),
    chunk_rows=st.integers(min_value=1, max_value=40),
    row_group=st.integers(min_value=1, max_value=50),
    parts=st.integers(min_value=1, max_value=4),
    done_mask=st.lists(st.booleans(), min_size=0, max_size=40),
)
def test_a_part_reading_only_its_units_gets_what_the_walk_gives_it(
    tmp_path_factory, sizes, shard_rows, chunk_rows, row_group, parts, done_mask
):
    # the walk over every row, then filtered, and the part reading only its own units' row groups, give
    # the same units: names, rows, ends (also after some units are committed)
    d = tmp_path_factory.mktemp("own")
    for f, n in enumerate(sizes):
        table = pa.table({"row": pa.array(range(n), pa.int64())})  # each row's own row number in its file
        pq.write_table(table, d / f"f{f}.parquet", row_group_size=row_group)
    sources = discover(str(d))
    walked = [c.unit for c in iter_chunks(sources, Manifest({}), ["row"], shard_rows, chunk_rows) if c.last]
    manifest = Manifest({})
    for u, done in zip(walked, done_mask, strict=False):
        if done:
            record = ShardRecord(
                u.name, "range", u.source.name, u.start, u.end, u.eof, u.end - u.start, 0, None, 0, "", 0
            )
            manifest.shards.append(record)
    for part in range(parts):

        def mine(unit, part=part):
            return int(unit.name[5:10]) % parts == part

        def describe(chunks):
            """(name, rows, end, eof) per unit (chunk edges may differ: they follow the batches read)."""
            units, rows = [], []
            for c in chunks:
                assert c.table.num_rows and c.first_row == c.table.column("row")[0].as_py()
                rows += c.table.column("row").to_pylist()
                if c.last:
                    units.append((c.unit.name, rows, c.unit.end, c.unit.eof))
                    rows = []
            assert rows == []
            return units

        everything = iter_chunks(sources, manifest, ["row"], shard_rows, chunk_rows)
        own = iter_chunks(sources, manifest, ["row"], shard_rows, chunk_rows, wanted=mine)
        expected = describe(c for c in everything if mine(c.unit))
        assert describe(c for c in own if mine(c.unit)) == expected
