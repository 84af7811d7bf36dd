"""The answer journal: a kill costs only the requests in flight; torn tails and foreign journals are harmless."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.output.journal.frames import decode_frames, encode_frame
from batchembed.output.journal.recovery import read_unit
from batchembed.output.journal.segments import LocalJournalStore, _LocalSegment
from batchembed.output.journal.writer import MAX_BACKLOG, Journal
from batchembed.output.shard_writer import vector_array
from batchembed.stats import Stats
from batchembed.tasks.memo import text_keys
from batchembed.tasks.rerank import RerankJournalCodec
from tests import test_rerank
from tests.conftest import (
    assert_vectors,
    job_for,
    kill_mid_run,
    make_texts,
    read_output,
    run_here,
    write_parquet,
)

BATCH = 10
CONCURRENCY = 2
IN_FLIGHT = BATCH * CONCURRENCY  # rows a kill can lose: the requests the server holds when it lands
LAG = BATCH * MAX_BACKLOG  # ... and answers accepted a moment before, still queued for the journal


def _job(tmp_path, srv, src, rows: int, shard_rows: int, **sections):
    limits = {"batch_inputs": BATCH, "concurrency": CONCURRENCY, "max_retries": 6}
    return job_for(tmp_path, srv, src, limits=limits, output={"shard_rows": shard_rows}, **sections)


def _kill_mid_run(srv, job, new_requests: int) -> None:
    """Start the job, SIGKILL it once the server has seen ``new_requests`` more requests, held in flight."""
    kill_mid_run(srv, job, len(srv.requests) + new_requests)


def _report(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "_report.json").read_text())


@pytest.mark.parametrize(("kills", "bound", "n"), [(4, 1.05, 8000), (5, 1.02, 12000)])
def test_repeated_sigkill_mid_shard_pays_only_for_requests_in_flight(tmp_path, srv, kills, bound, n):
    shard_rows = n // 2
    texts = make_texts(n, seed=11)
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=500)
    job = _job(tmp_path, srv, src, n, shard_rows)
    rng = np.random.default_rng(kills)
    out = tmp_path / "out"
    for _ in range(kills):
        _kill_mid_run(srv, job, int(rng.integers(10, n // BATCH // (kills + 1))))
        assert (out / "_journal").is_dir()

    status = json.loads(run_here(None, "status", str(job), "--json").stdout)
    assert 0 < status["rows_answered_uncommitted"] <= n - status["rows_done"]
    assert (
        f"{status['rows_answered_uncommitted']:,} rows answered but not yet in a committed shard"
        in run_here(None, "status", str(job)).stdout
    )

    final = run_here(srv, "run", str(job), "--quiet")

    assert final.returncode == 0, final.stderr
    table = read_output(out)
    assert table.column("id").to_pylist() == list(range(n))
    assert_vectors(table, dict(enumerate(texts)), 16)
    assert run_here(None, "verify", str(job)).returncode == 0
    sent = srv.all_texts()  # every text the server received in all runs, held ones included
    ratio = len(sent) / n
    assert ratio <= bound, f"server answered {len(sent)} rows for {n} distinct texts ({ratio:.3f}x)"
    assert max(Counter(sent).values()) <= 2
    report = _report(tmp_path)
    assert report["after_crash"]["rows_recovered_from_journal"] > 0
    # the last kill lost at most the held requests; the final run says what it sent again
    assert 0 < report["after_crash"]["rows_sent_again"] <= IN_FLIGHT + LAG
    assert report["rows"]["embedded"] == n - report["rows"]["already_done"]
    assert not (out / "_journal").exists()  # removed once every unit is committed
    assert "recovered from its journal" in final.stderr


def test_dedup_across_units_survives_a_kill(tmp_path, srv):
    # rows 2000..3999 repeat every other text of rows 0..1999: the repeats are never paid for again,
    # even after a kill while their unit is in progress (the in-memory memo died with the process)
    first = make_texts(2000, seed=3)
    fresh = make_texts(3000, seed=4)[2000:]
    texts = first + [first[i] if i % 2 == 0 else fresh[i // 2] for i in range(2000)]
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=500)
    job = _job(tmp_path, srv, src, len(texts), 2000)
    _kill_mid_run(srv, job, 240)  # unit 1 (200 requests) is committed, unit 2 is under way

    assert run_here(srv, "run", str(job), "--quiet").returncode == 0
    counts = Counter(srv.all_texts())
    assert all(counts[t] == 1 for t in first[:2000])  # the repeated texts were sent once, ever
    assert sum(counts.values()) <= len(set(texts)) + IN_FLIGHT + LAG
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert run_here(None, "verify", str(job)).returncode == 0


def test_torn_tail_and_foreign_journal_on_resume(tmp_path, srv):
    n = 3000
    texts = make_texts(n, seed=5)
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=500)
    job = _job(tmp_path, srv, src, n, 1500)
    _kill_mid_run(srv, job, 60)
    journal = tmp_path / "out" / "_journal"
    (segment,) = list(journal.glob("*/*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # the kill cut the last frame short
    foreign = LocalJournalStore(journal).open_segment("part-00001")
    foreign.append([_frame([b"k" * 16], fingerprint="another job")])
    foreign.close()

    result = run_here(srv, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert_vectors(read_output(tmp_path / "out"), dict(enumerate(texts)), 16)
    assert run_here(None, "verify", str(job)).returncode == 0
    assert _report(tmp_path)["after_crash"]["rows_recovered_from_journal"] > 0
    assert not journal.exists()


def test_rerank_scores_are_recovered_after_a_kill(tmp_path, srv):
    rows = test_rerank._pairs_dataset(tmp_path / "pairs.parquet", n_queries=300)
    pairs = len(rows["qid"])
    job = test_rerank._job(tmp_path, srv, tmp_path / "pairs.parquet")  # 4 requests of 4 pairs in flight
    job.write_text(job.read_text().replace("shard_rows = 50", f"shard_rows = {pairs}"))  # one unit: all uncommitted
    _kill_mid_run(srv, job, 150)
    scored_before = sum(len(r.inputs) for r in srv.requests if r.kind == "rerank")

    result = run_here(srv, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert test_rerank._got(read_output(tmp_path / "out")) == test_rerank._expected(rows)
    assert run_here(None, "verify", str(job)).returncode == 0
    scored = sum(len(r.inputs) for r in srv.requests if r.kind == "rerank")
    assert scored <= pairs + 16, (scored, pairs)  # only the 4 held requests were scored twice
    report = _report(tmp_path)["after_crash"]
    assert report["rows_recovered_from_journal"] >= scored_before - 16
    assert 0 < report["rows_sent_again"] <= 16


def _frame(keys: list[bytes], fingerprint: str = "fp", kind: str = "answers", rows: int | None = None) -> bytes:
    batch = pa.record_batch(
        {"key": pa.array(keys, pa.binary(16)), "score": pa.array(np.arange(len(keys)), pa.float32())}
    )
    meta = {"version": 1, "fingerprint": fingerprint, "kind": kind, "rows": len(keys) if rows is None else rows}
    return b"".join(bytes(part) for part in encode_frame(batch, meta))


def _store_with(tmp_path, *frames: bytes) -> LocalJournalStore:
    store = LocalJournalStore(tmp_path / "_journal")
    seg = store.open_segment("part-00000")
    for frame in frames:
        seg.append([frame])
    seg.close()
    return store


def test_a_frame_carries_zlibs_crc32_so_journals_of_earlier_versions_resume_and_theirs_read_back():
    frame = _frame([bytes([i]) * 16 for i in range(5)])
    length, crc = struct.unpack_from("<II", frame)

    assert crc == zlib.crc32(frame[8 : 8 + length])  # what journals written before ISA-L's crc32 hold
    (batch, meta), *rest = decode_frames(frame)
    assert not rest and batch.num_rows == 5 and meta["kind"] == "answers"
    damaged = bytearray(frame)
    damaged[-1] ^= 1
    assert list(decode_frames(bytes(damaged))) == []


@pytest.mark.parametrize("cut", [1, 8, 40, -1])
def test_torn_journal_tail_is_ignored(tmp_path, cut):
    good = [_frame([bytes([i]) * 16 for i in range(j * 3, j * 3 + 3)]) for j in range(3)]
    tail = _frame([b"z" * 16])
    torn = tail[:cut] if cut > 0 else tail[:-1]
    store = _store_with(tmp_path, *good, torn)

    rec = read_unit(store, "part-00000", "fp")

    assert rec is not None and len(rec.keys) == 9 and rec.rows == 9
    assert b"z" * 16 not in rec.keys
    assert list(rec.values("score")) == [0, 1, 2] * 3
    assert list(rec.find([bytes([4]) * 16, b"z" * 16])) == [4, -1]


def test_corrupt_frame_stops_the_read_there(tmp_path):
    frames = [_frame([bytes([i]) * 16]) for i in range(3)]
    middle = bytearray(frames[1])
    middle[-3] ^= 0xFF  # a flipped bit: the crc no longer matches
    store = _store_with(tmp_path, frames[0], bytes(middle), frames[2])
    rec = read_unit(store, "part-00000", "fp")
    assert rec.keys == [bytes([0]) * 16]


def test_a_later_segment_is_read_after_a_torn_one(tmp_path):
    store = _store_with(tmp_path, _frame([b"a" * 16]), _frame([b"b" * 16])[:-5])
    seg = store.open_segment("part-00000")  # the next run writes a new segment, never after the torn tail
    seg.append([_frame([b"c" * 16])])
    seg.close()
    rec = read_unit(store, "part-00000", "fp")
    assert rec.keys == [b"a" * 16, b"c" * 16]


def test_foreign_fingerprint_journal_is_discarded(tmp_path):
    store = _store_with(tmp_path, _frame([b"a" * 16]), _frame([b"b" * 16], fingerprint="other"))
    assert read_unit(store, "part-00000", "fp") is None
    assert read_unit(store, "part-00000", "other") is None  # mixed: nothing in it is trusted


def test_sent_without_answer_is_what_a_resume_resends(tmp_path):
    store = _store_with(
        tmp_path,
        _frame([b"a" * 16, b"b" * 16], kind="sent", rows=0),
        _frame([b"a" * 16]),
    )
    rec = read_unit(store, "part-00000", "fp")
    assert rec.sent == {b"b" * 16}
    assert rec.rows == 1


def test_frames_survive_without_close(tmp_path):
    """A frame is in the file once ``append`` returns: what a kill -9 right after it leaves behind."""
    root = tmp_path / "_journal" / "part-00000"
    root.mkdir(parents=True)
    seg = _LocalSegment(root / "000001.seg")
    seg.append([_frame([b"a" * 16])])
    batches = list(decode_frames((root / "000001.seg").read_bytes()))
    assert len(batches) == 1 and batches[0][1]["kind"] == "answers"
    seg.close()


def test_a_journal_that_cannot_write_steps_aside(tmp_path):
    """A full disk stops the journal (the job goes on and says so), it does not fail the job."""

    class FullDisk(LocalJournalStore):
        def open_segment(self, unit):
            raise OSError(28, "No space left on device", str(self.root / unit))

    codec = RerankJournalCodec()  # any task's: only the journal's own writing is at stake
    journal = Journal(FullDisk(tmp_path / "_journal"), "fp", codec=codec, stats=Stats(), committed=set())
    batch = pa.record_batch({"key": pa.array([b"a" * 16], pa.binary(16))})
    journal._append("part-00000", batch, {"version": 1, "fingerprint": "fp", "kind": "sent", "rows": 0})
    journal.close()
    assert "No space left on device" in journal.error and "part-00000" in journal.error


def test_a_row_the_server_cut_is_still_listed_after_a_kill(tmp_path, srv):
    # row 5 fits our count but not the server's 300 characters: it is cut and sent again, its answer
    # journaled; the kill comes before the unit is committed, and the resume takes that answer from the
    # journal (nothing sent again), yet still lists and counts row 5 as cut
    n = 3000
    texts = make_texts(n, seed=8)
    texts[5] = "doc 5: " + "river " * 80
    srv.max_input_chars = 300
    src = write_parquet(tmp_path / "in.parquet", texts, row_group_size=500)
    job = _job(tmp_path, srv, src, n, n)  # one unit: nothing is committed before the kill
    _kill_mid_run(srv, job, 80)
    journal = tmp_path / "out" / "_journal"
    frames = [batch for seg in journal.glob("*/*.seg") for batch, meta in decode_frames(seg.read_bytes())]
    answered = {k for b in frames if "vector" in b.schema.names for k in b.column("key").to_pylist()}
    assert text_keys([texts[5]])[0] in answered, "row 5's answer should be in the journal before the kill"
    sent_before = [t for t in srv.all_texts() if t.startswith("doc 5:")]

    result = run_here(srv, "run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    assert [t for t in srv.all_texts() if t.startswith("doc 5:")] == sent_before  # not bought again
    assert "1 truncated" in result.stderr
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in cut] == [(5, "server: input too long")]
    assert cut[0]["chars_before"] == len(texts[5]) and cut[0]["chars_after"] <= 300
    assert _report(tmp_path)["rows_truncated"] == 1
    assert json.loads(run_here(None, "status", str(job), "--json").stdout)["truncated_rows"] == 1
    table = read_output(tmp_path / "out")
    assert table.num_rows == n and run_here(None, "verify", str(job)).returncode == 0


def test_a_resume_reads_the_journal_a_frame_at_a_time(tmp_path):
    # a unit of 8,000 answers of 256 floats (8 MB) in 40 frames: indexing it, and taking the answers of one
    # piece, holds about a frame or two at a time, never the unit's answers whole (a 100k x 1024 unit is 400 MB)
    dim, frames, per_frame = 256, 40, 200
    rng = np.random.default_rng(1)
    vectors = rng.random((frames * per_frame, dim), dtype=np.float32)
    keys = [i.to_bytes(16, "big") for i in range(frames * per_frame)]
    store = LocalJournalStore(tmp_path / "_journal")
    seg = store.open_segment("part-00000")
    for f in range(frames):
        part = slice(f * per_frame, (f + 1) * per_frame)
        batch = pa.record_batch({"key": pa.array(keys[part], pa.binary(16)), "vector": vector_array(vectors[part])})
        seg.append(encode_frame(batch, {"version": 1, "fingerprint": "fp", "kind": "answers", "rows": per_frame}))
    seg.close()
    unit_bytes = vectors.nbytes

    tracemalloc.start()
    try:
        rec = read_unit(store, "part-00000", "fp")
        _, indexing_peak = tracemalloc.get_traced_memory()
        assert indexing_peak < unit_bytes / 4, (indexing_peak, unit_bytes)
        tracemalloc.reset_peak()
        piece = np.arange(3000, 3400)  # a piece's texts: answers spread over three frames
        got = rec.take("vector", rec.find([keys[i] for i in piece]))
        _, taking_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rec.close()

    np.testing.assert_array_equal(got, vectors[piece])
    assert rec.rows == frames * per_frame
    assert taking_peak < unit_bytes / 4, (taking_peak, unit_bytes)
