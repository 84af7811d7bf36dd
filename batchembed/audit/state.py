"""What ``status`` and ``verify`` say about an output as it is now, beyond its manifest: which runs hold
it, which failed/cut-row files exist, and whether every recorded shard is still there, whole.

A manifest says what was committed; it cannot say that a run is writing the output this minute, that a
shard was deleted from the bucket afterwards, or which of the per-part ``_failed.*.parquet`` files a
split output has. These are read here, cheaply (the lock/lease files, one listing), never written.
"""

from __future__ import annotations

from batchembed.errors import OutputError
from batchembed.job.config import JobConfig
from batchembed.output.layout import FAILED_FILE, MANIFEST, TRUNCATED_FILE
from batchembed.output.manifest import Manifest
from batchembed.output.parts import load_whole
from batchembed.output.store import open_store
from batchembed.output.store.base import OutputStore
from batchembed.output.store.holders import Writer, describe_writers, live_writers
from batchembed.output.store.listing import listed_sizes

__all__ = ["OutputNow", "Writer", "running_line", "still_running"]


class OutputNow:
    """One look at the output: its files' sizes (one listing) and the runs holding it."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self.sizes = listed_sizes(store)
        self.writers: list[Writer] = live_writers(store)

    def failed_files(self) -> list[str]:
        """The failed rows' files a run wrote at its end (``_failed.parquet``, or one per ``--shard`` part)."""
        return sorted(n for n in self.sizes if FAILED_FILE.fullmatch(n))

    def truncated_files(self) -> list[str]:
        """The cut rows' files that exist (``_truncated.parquet``, or one per part)."""
        return sorted(n for n in self.sizes if TRUNCATED_FILE.fullmatch(n))

    def damaged(self, manifest: Manifest) -> list[str]:
        """Recorded shards (and failure files) missing from the listing or of another size than recorded."""
        found = []
        for rec in manifest.shards:
            have = self.sizes.get(rec.name)
            if have is None:
                found.append(f"{rec.name} is recorded in {MANIFEST} but missing")
            elif have != rec.size:
                found.append(f"{rec.name} has {have} bytes, {MANIFEST} recorded {rec.size}")
            if rec.failed_file and rec.failed_file not in self.sizes:
                found.append(f"{rec.failed_file} is recorded in {MANIFEST} but missing")
        return found


def files_line(label: str, rows: int, files: list[str], per_shard: str, what: str = "") -> str:
    """ "failed:   12 rows, listed in _failed.shard-0000-of-0002.parquet, ..." naming only files that exist."""
    if not rows:
        return f"{label:<9} 0 rows{what}"
    where = ", ".join(files) if files else f"{per_shard}/ (one file per shard until a run ends)"
    return f"{label:<9} {rows:,} rows{what}, listed in {where}"


def running_line(writers: list[Writer]) -> str:
    """Whether a run holds the output's lock or lease now, and which."""
    if not writers:
        return "running:  no run holds this output's lock or lease now"
    return f"running:  a run holds this output now: {describe_writers(writers)}"


def still_running(writers: list[Writer]) -> str:
    """``verify``'s first word while a run writes the output."""
    return (
        f"the job is still running ({describe_writers(writers)}): rows it has not committed yet are missing "
        "for now; run verify again once it has finished"
    )


def load_output(job: JobConfig) -> tuple[OutputStore, Manifest]:
    """The output store and its manifest (every ``--shard`` part's, merged), read without taking a lock."""
    out = open_store(job)
    manifest, _ = load_whole(out)
    if manifest is None:
        raise OutputError(f"{out.uri}: no batchembed output here yet (no {MANIFEST})")
    return out, manifest
