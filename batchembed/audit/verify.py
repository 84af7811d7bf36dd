"""``batchembed verify``: prove an output exactly-once from first principles, reading it, never writing it.

``verify`` does not trust the manifest: the recorded ranges of every input file must tile it with no
gap or overlap, every shard must match its recorded checksum, and the ids in each shard must be exactly
the input ids of its range (in order) minus the rows listed as failed; retry shards must hold exactly the
failed rows they resolve; the Delta table must equal the manifest's shards.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.audit.owner import another_job, job_differences
from batchembed.audit.state import OutputNow, load_output, still_running
from batchembed.audit.status import describe_freshness, freshness
from batchembed.audit.table_check import compacted_missing, read_state, table_problems
from batchembed.errors import OutputError
from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.input.discover import discover
from batchembed.input.files import SourceFile
from batchembed.input.read import columns_of, iter_batches
from batchembed.input.row_ids import id_text, input_ids
from batchembed.job.config import JobConfig
from batchembed.output.input_diff import diff_inputs
from batchembed.output.manifest import Manifest
from batchembed.output.opening import check_file
from batchembed.output.store import storage_options
from batchembed.sinks.audit import verify_lines
from batchembed.tasks.ids import id_column_name


def verify(job: JobConfig) -> int:
    """Check the output holds every input row exactly once; print a report; exit 0 or 1."""
    out, manifest = load_output(job)
    problems: list[str] = []
    if differences := job_differences(job, manifest.fingerprint):
        problems.append(another_job(differences))
    if writers := OutputNow(out).writers:
        problems.append(still_running(writers))
    table = read_state(out, manifest)
    bad: set[str] = compacted_missing(out, table)  # their rows are checked in the files others compacted them into
    for rec in manifest.shards:
        try:
            if rec.name not in bad:
                check_file(out, rec.name, rec.size, rec.checksum)
        except OutputError as exc:
            problems.append(str(exc))
            bad.add(rec.name)
    sources = {s.name: s for s in discover(job.input.path, storage_options(job), identity=job.input.identity)}
    id_col = id_column_name(job)
    failed_rows: dict[str, pa.Table] = {}
    for rec in manifest.shards:
        if rec.failed_file and out.exists(rec.failed_file):
            failed_rows[rec.failed_file] = out.read_table(rec.failed_file)
    checked_rows = 0
    for name, src in sources.items():
        ranges = manifest.ranges_of(name)
        expected = 0
        for rec in ranges:
            if rec.start != expected:
                problems.append(
                    f"{name}: rows {expected}..{rec.start} are in no shard"
                    if rec.start > expected
                    else f"{name}: rows {rec.start}..{expected} are in two shards"
                )
            expected = max(expected, rec.end)
        total = src.rows if src.rows is not None else _count_rows(src)
        if expected != total:
            problems.append(f"{name}: rows {expected}..{total} are in no shard")
        for rec in ranges:
            if rec.name not in bad and rec.kind == "range":
                check = _check_rerank_range if job.is_rerank else _check_range
                checked_rows += check(out, rec, src, job, id_col, failed_rows, problems)
    good = [rec for rec in manifest.shards if rec.name not in bad]
    for rec in good:
        if rec.kind == "files":
            checked_rows += _check_files(out, rec, sources, job, id_col, failed_rows, problems)
    if job.is_rerank:
        _check_rerank_pairs(out, good, problems)
    for rec in good:
        if rec.kind == "retry" and not job.is_rerank:
            _check_retry(out, rec, id_col, failed_rows, problems)
    all_ids = [] if job.is_rerank else [out.read_table(rec.name, columns=[id_col]).column(id_col) for rec in good]
    if all_ids:
        ids = pa.chunked_array([id_text(c) for col in all_ids for c in col.chunks], pa.string())
        counts = pc.value_counts(ids)
        dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
        if len(dup):
            problems.append(f"{len(dup)} ids appear more than once in the output, e.g. {dup[0]['values']}")
    outstanding = sum(t.num_rows for f, t in failed_rows.items() if f not in set(manifest.resolved))
    problems += _input_problems(manifest, list(sources.values()))
    problems += table_problems(out, manifest, job, sources, table)
    print(
        f"checked {plural(len(manifest.shards), 'shard')}, {plural(checked_rows, 'row')} against "
        f"{plural(len(sources), 'input file')}"
    )
    if outstanding:
        problems.append(
            f"{plural(outstanding, 'row')} failed and are only in _failed.parquet (run again to retry them)"
        )
    sink_ok, sink_problems = verify_lines(job)
    problems += sink_problems
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return ExitCode.FAILED
    print("OK: every input row is in the output exactly once, with a well-formed vector column")
    for line in sink_ok:
        print(line)
    return ExitCode.OK


def _input_problems(manifest: Manifest, sources: list[SourceFile]) -> list[str]:
    """The inputs must be the ones the output was made from."""
    diff = diff_inputs(manifest, sources)
    if diff.added or diff.changed or diff.grown or diff.removed:
        return [f"the inputs changed since the output was written ({describe_freshness(freshness(manifest, sources))})"]
    return []


def _count_rows(src: SourceFile) -> int:
    # a JSON Lines file without any record has no field to read: any name reads nothing
    return sum(b.num_rows for b in iter_batches(src, [_first_column(src)]))


def _first_column(src: SourceFile) -> str:
    return (columns_of(src) or ["_"])[0]


def _check_vectors(table: pa.Table, column: str, name: str, problems: list[str]) -> None:
    if column not in table.column_names:
        problems.append(f"{name}: no vector column {column!r}")
        return
    col = table.column(column)
    if not pa.types.is_fixed_size_list(col.type) or col.type.value_type != pa.float32():
        problems.append(f"{name}: vector column has type {col.type}, expected fixed_size_list<float32>")
        return
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
    if not np.isfinite(values).all():
        problems.append(f"{name}: vector column holds NaN or infinite values")


def _check_range(out, rec, src, job, id_col, failed_rows, problems) -> int:
    table = out.read_table(rec.name)
    _check_vectors(table, job.output.column, rec.name, problems)
    expected = input_ids(src, job.input.id, rec.start, rec.end)
    if rec.failed_file in failed_rows:
        failed = failed_rows[rec.failed_file].column("row").to_numpy()
        keep = ~np.isin(np.arange(rec.start, rec.end), failed)
        expected = expected.filter(pa.array(keep))
    got = id_text(table.column(id_col).combine_chunks())
    if not got.equals(expected):
        problems.append(
            f"{rec.name}: holds {len(got)} rows whose ids do not match input {src.name} rows "
            f"{rec.start}..{rec.end} ({len(expected)} expected)"
        )
    return table.num_rows


def _check_files(out, rec, sources, job, id_col, failed_rows, problems) -> int:
    """A shard of several whole small files: their ids, file after file, minus their failed rows."""
    table = out.read_table(rec.name)
    _check_vectors(table, job.output.column, rec.name, problems)
    failed = failed_rows.get(rec.failed_file)
    parts = []
    for name, rows in rec.files:
        if name not in sources:
            problems.append(f"{rec.name}: holds rows of {name}, which is no longer an input")
            return table.num_rows
        expected = input_ids(sources[name], job.input.id, 0, rows)
        if failed is not None:
            mine = pc.equal(failed.column("file"), name).to_numpy(zero_copy_only=False)
            dropped = failed.column("row").to_numpy()[mine]
            expected = expected.filter(pa.array(~np.isin(np.arange(rows), dropped)))
        parts.append(expected)
    expected = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    got = id_text(table.column(id_col).combine_chunks())
    if not got.equals(expected):
        names = ", ".join(name for name, _ in rec.files[:3]) + (", ..." if len(rec.files) > 3 else "")
        problems.append(
            f"{rec.name}: holds {len(got)} rows whose ids do not match the rows of {len(rec.files)} whole input "
            f"files ({names}; {len(expected)} expected)"
        )
    return table.num_rows


def _check_retry(out, rec, id_col, failed_rows, problems) -> None:
    table = out.read_table(rec.name, columns=[id_col])
    wanted = [failed_rows[f].column("id") for f in rec.resolves if f in failed_rows]
    expected = (
        set(pa.chunked_array([id_text(c) for w in wanted for c in w.chunks], pa.string()).to_pylist())
        if wanted
        else set()
    )
    if rec.failed_file in failed_rows:
        expected -= set(id_text(failed_rows[rec.failed_file].column("id")).to_pylist())
    got = id_text(table.column(id_col)).to_pylist()
    if sorted(got) != sorted(expected):
        problems.append(f"{rec.name}: retry shard does not hold exactly the failed rows it resolves")


def _check_rerank_range(out, rec, src, job, id_col, failed_rows, problems) -> int:
    """A rerank shard: score/rank types, and (pairs layout, no top_n) one output row per input pair."""
    table = out.read_table(rec.name)
    for name, kind in (("score", pa.float32()), ("rank", pa.int32())):
        if name not in table.column_names or table.schema.field(name).type != kind:
            problems.append(f"{rec.name}: column {name!r} missing or not {kind}")
    rr = job.rerank
    if rr is not None and rr.layout == "pairs" and rr.top_n is None:
        failed = failed_rows[rec.failed_file].num_rows if rec.failed_file in failed_rows else 0
        if table.num_rows != rec.end - rec.start - failed:
            problems.append(
                f"{rec.name}: {table.num_rows} rows for input rows {rec.start}..{rec.end} of {src.name} "
                f"({rec.end - rec.start - failed} expected)"
            )
    return table.num_rows


def _check_rerank_pairs(out, shards, problems) -> None:
    """Every (query_id, doc_id) once, and every query in one shard only."""
    owner: dict = {}
    pairs = []
    for rec in shards:
        table = out.read_table(rec.name, columns=["query_id", "doc_id"])
        for qid in set(table.column("query_id").to_pylist()):
            if qid in owner and owner[qid] != rec.name and rec.kind == "range":
                problems.append(f"query {qid!r} is split across {owner[qid]} and {rec.name}")
            owner.setdefault(qid, rec.name)
        pairs.append(
            pa.table(
                {"q": pc.cast(table.column("query_id"), pa.string()), "d": pc.cast(table.column("doc_id"), pa.string())}
            )
        )
    if pairs:
        both = pa.concat_tables(pairs)
        counts = both.group_by(["q", "d"]).aggregate([([], "count_all")])
        dup = counts.filter(pc.greater(counts.column("count_all"), 1))
        if dup.num_rows:
            problems.append(f"{dup.num_rows} (query, document) pairs appear more than once")
