"""``batchembed status``: where an output stands — rows and shards done, failed and cut rows, tokens,
whether it is complete and up to date with its inputs, who is writing it, its vectors — read, never written."""

from __future__ import annotations

import json
from typing import Any

from batchembed.audit.owner import another_job, job_differences, run_fingerprint
from batchembed.audit.state import OutputNow, files_line, load_output, running_line
from batchembed.audit.table_check import compacted_missing, describe, read_state, sound
from batchembed.audit.vectors import vector_lines, vector_status
from batchembed.exitcodes import ExitCode
from batchembed.human import plural
from batchembed.input.discover import discover
from batchembed.input.files import SourceFile
from batchembed.input.units import planned_units
from batchembed.job.config import JobConfig
from batchembed.job.fingerprint import fingerprint_hash
from batchembed.output.figures import describe as describe_figures
from batchembed.output.input_diff import diff_inputs
from batchembed.output.journal.recovery import answered
from batchembed.output.journal.segments import journal_store
from batchembed.output.layout import FAILED_DIR, SUCCESS, TRUNCATED_DIR
from batchembed.output.manifest import Manifest
from batchembed.output.store import storage_options
from batchembed.output.store.base import OutputStore
from batchembed.sinks import audit as sinks_audit


def status(job: JobConfig, as_json: bool = False) -> int:
    """Print done/total rows and shards, failed rows, tokens, completeness. Exit 0."""
    out, manifest = load_output(job)
    sources = discover(job.input.path, storage_options(job), identity=job.input.identity)
    total_rows = None if any(s.rows is None for s in sources) else sum(s.rows for s in sources)
    shard_rows = job.output.shard_rows
    total_shards = (
        None if total_rows is None else planned_units([s.rows for s in sources], shard_rows, not job.is_rerank)
    )
    failed = manifest.unresolved_rows(out)
    uncommitted_rows, uncommitted_tokens = _answered_uncommitted(out, manifest)
    differences = job_differences(job, manifest.fingerprint)
    manifest.wanted = run_fingerprint(job)  # a changed input.keep is not another job: `run` rewrites the shards
    now = OutputNow(out)
    table = read_state(out, manifest)
    damaged = [d for d in now.damaged(manifest) if d.split(" ", 1)[0] not in compacted_missing(out, table)]
    written = manifest.complete and SUCCESS in now.sizes and not damaged and sound(table)
    doc: dict[str, Any] = {
        "output": out.uri,
        "complete": written and not differences,
        "table": describe(table),
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
        "tokens": manifest.tokens(),  # for the table's current rows (``output.figures``)
        "tokens_paid": sum(s.tokens for s in manifest.shards),
        "tokens_carried": sum(s.reused_tokens for s in manifest.shards),
        "tokens_uncommitted": uncommitted_tokens,
        "refresh": manifest.refresh,
        "same_job": not differences,
        "job_differences": differences,
        **freshness(manifest, sources),
        "running": [{"lease": w.lease, "holder": w.who, "part": w.part} for w in now.writers],
        "damaged": damaged,
        **vector_status(job, manifest),
    }
    # (the batch API client imports aiohttp: only for an output that has batches to show)
    from batchembed.run.batch.cancel import batch_status, print_batch_status

    batches = batch_status(out)
    if batches is not None:
        doc["batches"] = batches
    if job.sink:
        doc["sinks"] = sinks_audit.status(job)
    if as_json:
        print(json.dumps(doc, indent=2))
        return ExitCode.OK
    of = lambda x: f" of {x:,}" if x is not None else ""  # noqa: E731
    print(f"output:   {out.uri}")
    print(f"state:    {_state(doc['complete'], written, differences)}")
    if differences:
        print(f"warning:  {another_job(differences)}")
    for problem in damaged:
        print(f"damaged:  {problem} (`run` and `verify` refuse it; --restart starts over)")
    print(running_line(now.writers))
    print(f"rows:     {doc['rows_done']:,}{of(total_rows)} in shards")
    print(f"shards:   {doc['shards_done']:,}{of(total_shards)} (+{plural(doc['retry_shards'], 'retry shard')})")
    print(files_line("failed:", failed, doc["failed_files"], FAILED_DIR))
    if doc["rows_answered_uncommitted"]:
        print(
            f"journal:  {doc['rows_answered_uncommitted']:,} rows answered but not yet in a committed shard "
            "(a resume reads them back instead of paying for them again)"
        )
    print(files_line("cut:", doc["truncated_rows"], doc["truncated_files"], TRUNCATED_DIR, " cut to fit"))
    if doc["served_model"]:
        print(f"model:    {doc['served_model']} (as the server named it)")
    print(_tokens_line(doc, uncommitted_tokens))
    if doc["refresh"]:
        print(f"refresh:  generation {doc['refresh'].get('generation')}: {describe_figures(doc['refresh'])}")
    for line in vector_lines(doc, len(manifest.shards)):
        print(line)
    print(f"inputs:   {describe_freshness(doc)}")
    print(f"table:    {doc['table']}")
    if batches is not None:
        print_batch_status(batches)
    for line in sinks_audit.status_lines(doc.get("sinks", [])):
        print(line)
    return ExitCode.OK


def _state(complete: bool, written: bool, differences: list[str]) -> str:
    """The ``state:`` line: another job's complete output is complete, for the job that wrote it."""
    done = written if differences else complete
    return ("complete" if done else "incomplete") + (" (written by another job: see below)" if differences else "")


def freshness(manifest: Manifest, sources: list[SourceFile]) -> dict[str, Any]:
    """Whether the output is up to date with the input files (what a run would refresh)."""
    diff = diff_inputs(manifest, sources)
    pending = bool(diff.added or diff.changed or diff.grown or diff.removed or diff.reshaped or manifest.retiring)
    return {"up_to_date": not pending and manifest.complete, "inputs": diff.summary(), "reshaped": diff.reshaped}


def describe_freshness(doc: dict[str, Any]) -> str:
    """``freshness``'s figures in one phrase ("up to date with its 12 input files", what would change)."""
    counts = doc["inputs"]
    if doc["up_to_date"]:
        return f"up to date with its {plural(counts['files_unchanged'], 'input file')}"
    changes = ", ".join(
        f"{counts['files_' + k]:,} {k}" for k in ("added", "changed", "grown", "removed") if counts.get("files_" + k)
    )
    if not changes and doc.get("reshaped"):
        return "its kept columns (input.keep) changed: `run` rewrites every shard from the vectors it holds"
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


def _tokens_line(doc: dict[str, Any], uncommitted: int) -> str:
    """Tokens for the table's current rows (``output.figures``): what the runs that wrote its shards paid (a
    resumed unit's shard counts what its killed runs paid for the answers its journal kept), plus what the
    vectors a refresh reused had cost; then what journals hold."""
    line = (
        f"tokens:   {doc['tokens']:,} for the table's current rows ({doc['tokens_paid']:,} paid by the runs that "
        f"wrote its shards, killed ones included; {doc['tokens_carried']:,} carried with vectors reused from "
        "replaced shards)"
    )
    if uncommitted:
        line += f"; {uncommitted:,} more for answers not yet in a shard"
    return line
