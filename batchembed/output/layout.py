"""Every reserved name of an output, in one place: the files and folders batchembed keeps beside the
shards (manifest, commit log, answer journal, locks, report, marker, failed and cut rows, the batch
ledger, the Delta log), the per-part names of a ``--shard I/N`` split, and how shard file names read.

A name spelled anywhere else is a bug: moving or renaming one of these breaks every existing output.
"""

from __future__ import annotations

import re

#: The manifest: committed shards, the job's fingerprint, the refresh generation (the commit point).
MANIFEST = "_manifest.json"
#: The commit log: one line per commit, folded into the manifest (local outputs).
COMMITS = "_commits.jsonl"
#: Written last, when the output is complete.
SUCCESS = "_SUCCESS"
#: The last run's figures (rows, tokens, limits learned from the server).
REPORT = "_report.json"
#: Rows that failed, gathered (``FAILED``), and per shard (``FAILED_DIR/<shard>``).
FAILED = "_failed.parquet"
FAILED_DIR = "_failed"
#: Rows whose text was cut to fit, gathered and per shard.
TRUNCATED = "_truncated.parquet"
TRUNCATED_DIR = "_truncated"
#: The Delta table's log (``publish/``).
DELTA_LOG = "_delta_log"
#: The answer journal of units in flight (``journal``).
JOURNAL_DIR = "_journal"
#: Locks and leases (never a shard, never deleted by a restart).
LEASE_DIR = "_lease"
#: The output-wide mutex every writer holds while it is admitted (``store.admission``).
GATE = f"{LEASE_DIR}/admit"
#: The refresh generation every part of a ``--shard I/N`` split follows (``split_plan``).
SPLIT_PLAN = "_split.json"
#: The batch tier's ledger (``run/batch/ledger``).
BATCH_DIR = "_batch"
#: The batch tier's record of a complete plan: for which job and inputs, and what each unit waits for
#: (``run/batch/plan_record``; a ``run --no-wait`` poll finds its plan there instead of reading the inputs).
BATCH_PLAN = f"{BATCH_DIR}/job.plan.json"
#: Every shard file (range, files and retry shards) starts so.
SHARD_PREFIX = "part-"

#: A range or files shard: ``part-00007.parquet``, or with its write attempt ``part-00007-0a1b2c3d.parquet``.
RANGE_SHARD = re.compile(r"part-(\d+)(?:-[0-9a-f]{8})?(?:\.parquet)?$")
#: A retry shard of one ``--shard I/N`` part: ``part-r00001-shard-0001-of-0004[-attempt].parquet``.
PART_RETRY_SHARD = re.compile(r"part-r\d+-shard-(\d+)-of-(\d+)(?:-[0-9a-f]{8})?(?:\.parquet)?$")
#: The manifest of one ``--shard I/N`` part.
PART_MANIFEST = re.compile(r"_manifest\.shard-(\d+)-of-(\d+)\.json$")
#: A writer's lease name (without extension): ``_lease/job`` or ``_lease/shard-0001-of-0004``.
_LEASE = re.compile(rf"{LEASE_DIR}/(?:(job)|shard-(\d+)-of-(\d+))")
#: The gathered failed and cut rows' files (the whole job's, or one part's).
FAILED_FILE = re.compile(r"_failed(\.[^/]+)?\.parquet$")
TRUNCATED_FILE = re.compile(r"_truncated(\.[^/]+)?\.parquet$")

Part = tuple[int, int] | None


#: Every name batchembed gives a shard, a unit or their temp file (and nothing another writer names
#: ``part-...``: delta-rs' ``part-00000-<uuid>-c000.zstd.parquet``, Spark's, are not ours).
OUR_SHARD = re.compile(r"part-(?:\d+|r\d+(?:-shard-\d+-of-\d+)?)(?:-[0-9a-f]{8})?(?:\.parquet)?(?:\.tmp)?")


def is_shard(name: str) -> bool:
    """Whether ``name`` (a base name) is a shard file (or unit, or temp file) batchembed wrote: only these
    are ever deleted as orphans; files others added to the table (a compaction's) are not batchembed's."""
    return OUR_SHARD.fullmatch(name) is not None


def part_suffix(shard: tuple[int, int]) -> str:
    """The tag of one ``--shard I/N`` part in file names: ``shard-0001-of-0004``."""
    index, count = shard
    return f"shard-{index:04d}-of-{count:04d}"


def lease_name(shard: Part = None) -> str:
    """The lock/lease key of a run: one for the whole output, or one per ``--shard I/N`` slice."""
    if shard is None:
        return f"{LEASE_DIR}/job"
    return f"{LEASE_DIR}/{part_suffix(shard)}"


def writer_of(name: str) -> tuple[bool, Part]:
    """(is a writer's lease, its part) for a lease name without extension (``_lease/job`` -> (True, None))."""
    match = _LEASE.fullmatch(name)
    if not match:
        return False, None
    if match.group(1):
        return True, None
    return True, (int(match.group(2)), int(match.group(3)))


def manifest_names(shard: Part) -> tuple[str, str]:
    """(manifest, commit log) file names of the whole job or of one ``--shard`` part."""
    if shard is None:
        return MANIFEST, COMMITS
    tag = part_suffix(shard)
    return f"_manifest.{tag}.json", f"_commits.{tag}.jsonl"


def part_failed(shard: tuple[int, int]) -> str:
    """The gathered failed rows of one ``--shard I/N`` part."""
    return f"_failed.{part_suffix(shard)}.parquet"


def part_report(shard: tuple[int, int]) -> str:
    """The report of one ``--shard I/N`` part."""
    return f"_report.{part_suffix(shard)}.json"


def retry_shard(n: int, shard: Part = None) -> str:
    """The name of retry shard ``n`` (rows of ``_failed``), the whole job's or one part's."""
    return f"part-r{n:05d}.parquet" if shard is None else f"part-r{n:05d}-{part_suffix(shard)}.parquet"
