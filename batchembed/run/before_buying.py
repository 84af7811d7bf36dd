"""Everything a run checks before it buys anything: the shared Delta table, the inputs it reads, the output's
column types.

Each check refuses with one sentence naming the file, column or table and what to do, so that a run that
cannot finish stops before the first request rather than after paying (``input.checks``,
``output.shared_table``, ``output.schema_check`` hold the checks; this is their order for one run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchembed.input.checks import check_inputs
from batchembed.input.read import check_columns
from batchembed.output.schema_check import settle_output
from batchembed.output.shared_table import before_buying as table_before_buying

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.job.config import JobConfig
    from batchembed.output.commit import JobOutput
    from batchembed.output.input_diff import InputDiff
    from batchembed.output.manifest import Manifest
    from batchembed.run.placement import SeenInputs


def check_before_buying(
    job: JobConfig,
    output: JobOutput,
    diff: InputDiff,
    sources: list[SourceFile],
    columns: list[str],
    say: Callable[[str], None],
    seen: SeenInputs | None = None,
) -> tuple[list[SourceFile], Any]:
    """(the files this run reads, the output's column types settled for every shard it writes, or None when
    it writes none). The Delta table is repaired, taken in or refused (as the output's role may), then the
    files read are checked (columns, ids against the rows the output keeps), then the column types.

    ``seen``: what an earlier run of this job read and checked (the batch tier's recorded plan). When every
    file read was seen as it is now, none is opened or checked again and the column types are the ones that
    run settled: a batch-tier poll reads no input."""
    manifest: Manifest = output.manifest
    access = output.role.table_access
    table_before_buying(
        output.store, manifest, diff, sources, job, writes=access == "writes", part=access == "reads",
        publisher=output.table, say=say,
    )  # fmt: skip
    work = output.work_files(sources)
    unchecked = seen.unchecked(work) if seen is not None else work
    for src in unchecked:
        check_columns(src, columns, job)
    if unchecked:
        held = output.held_ids(job.input.id) if job.input.id else []
        check_inputs(job, unchecked, columns, held)
    if not (unchecked or manifest.unresolved_failures()):
        return work, (dict(seen.types) if seen is not None and work else None)
    return work, settle_output(job, work, output.store, manifest.shards)
