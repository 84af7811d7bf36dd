"""A ``--shard I/N`` split refreshed day after day: which units a part owns in a generation never depends on
what only another part knows, so whatever the change (a new first file, rows appended to the first file, a
removed middle file), the parts run one after another or together, killed or not, the Delta table equals
the inputs exactly and only new texts are bought."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchembed.testing import expected_vector
from tests.conftest import job_for, make_texts, run_here, start_cli

ROWS, SHARD = 1000, 600
CHANGES = ("new-first-file", "rows-appended-to-the-first-file", "middle-file-removed")


def day_one(tmp_path):
    """Three Parquet files of 1,000 rows (ids unique across them): (folder, {id: text})."""
    src = tmp_path / "in"
    src.mkdir()
    text_of = {}
    for f in range(3):
        ids = [f * ROWS + i for i in range(ROWS)]
        texts = make_texts(ROWS, seed=f)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), src / f"f{f}.parquet")
        text_of.update(zip(ids, texts, strict=True))
    return src, text_of


def change(src, text_of: dict, kind: str) -> tuple[dict, set[str]]:
    """Day two's inputs: (the rows the table must hold then, the texts that are new)."""
    want = dict(text_of)
    if kind == "new-first-file":  # sorts before f0: every later unit of the generation moves
        ids = list(range(90_000, 90_300))
        texts = [f"a new first file, row {i}" for i in ids]
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), src / "e.parquet")
        want.update(zip(ids, texts, strict=True))
        return want, set(texts)
    if kind == "rows-appended-to-the-first-file":
        extra = list(range(80_000, 80_300))
        want.update({i: f"appended row {i}" for i in extra})
        ids = list(range(ROWS)) + extra
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [want[i] for i in ids]}), src / "f0.parquet")
        return want, {want[i] for i in extra}
    assert kind == "middle-file-removed"
    (src / "f1.parquet").unlink()
    for i in range(ROWS, 2 * ROWS):
        del want[i]
    return want, set()


def table_rows(out) -> pa.Table:
    """The Delta table's current rows (its files read with a plain Parquet reader: no abort at exit)."""
    return ds.dataset(DeltaTable(str(out)).file_uris(), format="parquet").to_table(columns=["id", "embedding"])


def assert_table_is(out, want: dict) -> None:
    """Every id of the inputs once, with the vector of its current text; nothing else."""
    table = table_rows(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice in the table"
    assert sorted(ids) == sorted(want)
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = np.stack([expected_vector(want[i], 16) for i in ids])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def split_job(tmp_path, fake, src, **sections):
    return job_for(tmp_path, fake, src, output={"shard_rows": SHARD}, **sections)


def run_parts(fake, job, count: int, order=None) -> None:
    for index in order or range(count):
        result = run_here(fake, "run", str(job), "--quiet", "--shard", f"{index}/{count}")
        assert result.returncode == 0, result.stderr


def run_together(job, count: int) -> None:
    procs = [start_cli("run", str(job), "--quiet", "--shard", f"{i}/{count}") for i in range(count)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def settled(tmp_path, fake, job, want: dict, fresh: set[str]) -> None:
    """The table equals the inputs, only new texts were bought (at most 5% more rows), `verify` agrees."""
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_table_is(out, want)
    bought = fake.received_texts()
    assert set(bought) <= fresh
    assert len(bought) <= 1.05 * len(fresh), f"{len(bought)} rows billed for {len(fresh)} new texts"
    verify = run_here(None, "verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert status["complete"] and status["up_to_date"]


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("kind", CHANGES)
def test_parts_run_one_after_another_refresh_exactly(tmp_path, fake, kind, count):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, fake, src)
    run_parts(fake, job, count)
    want, fresh = change(src, text_of, kind)
    fake.reset_records()

    run_parts(fake, job, count, order=reversed(range(count)))

    settled(tmp_path, fake, job, want, fresh)
    # a day with no change after it: nothing read, nothing bought
    fake.reset_records()
    run_parts(fake, job, count)
    assert fake.requests == []


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("kind", CHANGES)
def test_parts_run_together_refresh_exactly(tmp_path, srv, kind, count):
    src, text_of = day_one(tmp_path)
    job = split_job(tmp_path, srv, src)
    run_parts(srv, job, count)
    want, fresh = change(src, text_of, kind)
    srv.reset_records()

    run_together(job, count)

    settled(tmp_path, srv, job, want, fresh)
