"""``batchembed status`` and ``batchembed verify``: read an output directory, never write it.

``verify`` proves exactly-once from first principles rather than trusting the manifest: the
recorded ranges of every input file must tile it with no gap or overlap, every shard must match
its recorded checksum, and the ids in each shard must be exactly the input ids of its range (in
order) minus the rows listed as failed; retry shards must hold exactly the failed rows they resolve.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.audit.owner import another_job, job_differences
from batchembed.audit.state import OutputNow, files_line, running_line, still_running
from batchembed.audit.vectors import vector_lines, vector_status
from batchembed.errors import OutputError
from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.input.discover import discover
from batchembed.input.files import SourceFile
from batchembed.input.read import iter_batches
from batchembed.input.units import planned_units
from batchembed.job.config import JobConfig
from batchembed.job.fingerprint import fingerprint_hash
from batchembed.output.input_diff import diff_inputs
from batchembed.output.journal.recovery import answered
from batchembed.output.journal.segments import journal_store
from batchembed.output.layout import SUCCESS
from batchembed.output.manifest import Manifest, check_file
from batchembed.output.store import open_store, storage_options
from batchembed.output.store.base import OutputStore
from batchembed.tasks.ids import generated_ids, id_column_name


def _load(job: JobConfig) -> tuple[OutputStore, Manifest]:
    """The output store and its manifest (every ``--shard`` part's, merged), read without taking a lock."""
    from batchembed.output.parts import load_whole

    out = open_store(job)
    manifest, _ = load_whole(out)
    if manifest is None:
        raise OutputError(f"{out.uri}: no batchembed output here yet (no _manifest.json)")
    return out, manifest


def status(job: JobConfig, as_json: bool = False) -> int:
    """Print done/total rows and shards, failed rows, tokens, completeness. Exit 0."""
    out, manifest = _load(job)
    sources = discover(job.input.path, storage_options(job))
    total_rows = None if any(s.rows is None for s in sources) else sum(s.rows for s in sources)
    shard_rows = job.output.shard_rows
    total_shards = (
        None if total_rows is None else planned_units([s.rows for s in sources], shard_rows, not job.is_rerank)
    )
    failed = manifest.unresolved_rows(out)
    uncommitted_rows, uncommitted_tokens = _answered_uncommitted(out, manifest)
    differences = job_differences(job, manifest.fingerprint)
    now = OutputNow(out)
    damaged = now.damaged(manifest)
    doc: dict[str, Any] = {
        "output": out.uri,
        "complete": manifest.complete and SUCCESS in now.sizes and not differences and not damaged,
        "rows_done": manifest.rows(),
        "rows_total": total_rows,
        "shards_done": sum(1 for s in manifest.shards if s.kind in ("range", "files")),
        "shards_total": total_shards,
        "retry_shards": sum(1 for s in manifest.shards if s.kind == "retry"),
        "failed_rows": failed,
        "failed_files": now.failed_files(),
        "rows_answered_uncommitted": uncommitted_rows,
        "truncated_rows": manifest.truncated(),
        "truncated_files": now.truncated_files(),
        "served_model": manifest.server.get("served_model"),
        "tokens": manifest.tokens(),
        "tokens_uncommitted": uncommitted_tokens,
        "same_job": not differences,
        "job_differences": differences,
        **_freshness(manifest, sources),
        "running": [{"lease": w.lease, "holder": w.who, "part": w.part} for w in now.writers],
        "damaged": damaged,
        **vector_status(job, manifest),
    }
    from batchembed.run.batch.cancel import batch_status, print_batch_status

    batches = batch_status(out)
    if batches is not None:
        doc["batches"] = batches
    if as_json:
        print(json.dumps(doc, indent=2))
        return ExitCode.OK
    of = lambda x: f" of {x:,}" if x is not None else ""  # noqa: E731
    print(f"output:   {out.uri}")
    print(f"state:    {_state(doc['complete'], manifest.complete, differences)}")
    if differences:
        print(f"warning:  {another_job(differences)}")
    for problem in damaged:
        print(f"damaged:  {problem} (`run` and `verify` refuse it; --restart starts over)")
    print(running_line(now.writers))
    print(f"rows:     {doc['rows_done']:,}{of(total_rows)} in shards")
    print(f"shards:   {doc['shards_done']:,}{of(total_shards)} (+{plural(doc['retry_shards'], 'retry shard')})")
    print(files_line("failed:", failed, doc["failed_files"], "_failed"))
    if doc["rows_answered_uncommitted"]:
        print(
            f"journal:  {doc['rows_answered_uncommitted']:,} rows answered but not yet in a committed shard "
            "(a resume reads them back instead of paying for them again)"
        )
    print(files_line("cut:", doc["truncated_rows"], doc["truncated_files"], "_truncated", " cut to fit"))
    if doc["served_model"]:
        print(f"model:    {doc['served_model']} (as the server named it)")
    print(_tokens_line(doc["tokens"], uncommitted_tokens))
    for line in vector_lines(doc, len(manifest.shards)):
        print(line)
    print(f"inputs:   {_describe_freshness(doc)}")
    if batches is not None:
        print_batch_status(batches)
    return ExitCode.OK


def _state(complete: bool, written: bool, differences: list[str]) -> str:
    """The ``state:`` line: another job's complete output is complete, for the job that wrote it."""
    done = written if differences else complete
    return ("complete" if done else "incomplete") + (" (written by another job: see below)" if differences else "")


def _freshness(manifest: Manifest, sources: list[SourceFile]) -> dict[str, Any]:
    """Whether the output is up to date with the input files (what a run would refresh)."""
    diff = diff_inputs(manifest, sources)
    pending = bool(diff.added or diff.changed or diff.removed or manifest.retiring)
    return {"up_to_date": not pending and manifest.complete, "inputs": diff.summary()}


def _describe_freshness(doc: dict[str, Any]) -> str:
    counts = doc["inputs"]
    if doc["up_to_date"]:
        return f"up to date with its {plural(counts['files_unchanged'], 'input file')}"
    changes = ", ".join(
        f"{counts['files_' + k]:,} {k}" for k in ("added", "changed", "removed") if counts["files_" + k]
    )
    if not changes:
        return "not complete yet: `run` resumes it"
    return f"not up to date: {changes} since it was written; `run` refreshes it"


def _answered_uncommitted(out: OutputStore, manifest: Manifest) -> tuple[int, int]:
    """Rows the journals of units not yet committed hold answers for, and the tokens paid for them."""
    store = journal_store(out)
    committed = {s.unit_name for s in manifest.shards}
    fingerprint = fingerprint_hash(manifest.fingerprint)
    found = [answered(store, unit, fingerprint) for unit in store.units() if unit not in committed]
    return sum(rows for rows, _ in found), sum(tokens for _, tokens in found)


def _tokens_line(committed: int, uncommitted: int) -> str:
    """Tokens where they were bought: every run's purchases for the committed shards (a resumed unit's
    shard counts what its killed runs paid for the answers its journal kept), plus those in journals."""
    line = f"tokens:   {committed:,} paid for the committed shards (by every run, killed ones included)"
    if uncommitted:
        line += f"; {uncommitted:,} more for answers not yet in a shard"
    return line


def verify(job: JobConfig) -> int:
    """Check the output holds every input row exactly once; print a report; exit 0 or 1."""
    out, manifest = _load(job)
    problems: list[str] = []
    if differences := job_differences(job, manifest.fingerprint):
        problems.append(another_job(differences))
    if writers := OutputNow(out).writers:
        problems.append(still_running(writers))
    bad: set[str] = set()
    for rec in manifest.shards:
        try:
            check_file(out, rec.name, rec.size, rec.sha256)
        except OutputError as exc:
            problems.append(str(exc))
            bad.add(rec.name)
    sources = {s.name: s for s in discover(job.input.path, storage_options(job))}
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
    problems += _table_problems(out, manifest, list(sources.values()))
    print(
        f"checked {plural(len(manifest.shards), 'shard')}, {plural(checked_rows, 'row')} against "
        f"{plural(len(sources), 'input file')}"
    )
    if outstanding:
        problems.append(
            f"{plural(outstanding, 'row')} failed and are only in _failed.parquet (run again to retry them)"
        )
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return ExitCode.FAILED
    print("OK: every input row is in the output exactly once, with a well-formed vector column")
    return ExitCode.OK


def _table_problems(out: OutputStore, manifest: Manifest, sources: list[SourceFile]) -> list[str]:
    """The Delta table and the manifest must agree once a run has finished; the inputs must be the ones
    the output was made from."""
    problems = []
    diff = diff_inputs(manifest, sources)
    if diff.added or diff.changed or diff.removed:
        problems.append(
            f"the inputs changed since the output was written ({_describe_freshness(_freshness(manifest, sources))})"
        )
    if manifest.complete and not manifest.retiring:
        from batchembed.output.publish.table import table_disagreements

        problems += [f"Delta table: {p}" for p in table_disagreements(out, manifest.shards)]
    return problems


def _count_rows(src: SourceFile) -> int:
    # a JSON Lines file without any record has no field to read: any name reads nothing
    return sum(b.num_rows for b in iter_batches(src, [_first_column(src)]))


def _first_column(src: SourceFile) -> str:
    from batchembed.input.read import columns_of

    return (columns_of(src) or ["_"])[0]


def _expected_ids(src: SourceFile, job: JobConfig, start: int, end: int) -> pa.Array:
    if job.input.id:
        parts = []
        pos = start
        for batch in iter_batches(src, [job.input.id], start):
            take = min(batch.num_rows, end - pos)
            parts.append(batch.column(0).slice(0, take))
            pos += take
            if pos >= end:
                break
        return pa.concat_arrays([id_text(p) for p in parts]) if parts else pa.array([], pa.string())
    return generated_ids(src.name, np.arange(start, end, dtype=np.int64))


def id_text(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Ids by their text form, as the id check (``inputcheck``) compares them: CSV text ids, Parquet
    integer ids, ``string`` and ``large_string`` columns all meet as ``string`` (42 and "42" are one id)."""
    return ids if ids.type == pa.string() else pc.cast(ids, pa.string())


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
    expected = _expected_ids(src, job, rec.start, rec.end)
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
        expected = _expected_ids(sources[name], job, 0, rows)
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
