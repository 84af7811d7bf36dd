"""What a shard records of each CSV or JSON Lines file whose last rows it holds: where the file ended.

A daily export usually grows at its end. When a unit's rows reach the end of such a file, its shard
records (``ShardRecord.ends``, per file) what a later run needs to tell, cheaply, that the file only
grew or was only touched:

* ``rows``, ``bytes``: the file's records and its size then (the rows end at that byte);
* ``grows``: whether rows can follow there (an uncompressed file whose last byte is a line feed; a
  compressed stream cannot be entered in its middle, so a compressed file is read again whole);
* ``probe``: the digest of a few blocks of those bytes (``digest.probe``: about 200 KB read however
  large the file), compared when the file is bigger now;
* ``cuts``, ``chain``: the digest of every byte up to ``bytes`` (local files), extended at each growth by
  hashing only the new bytes; a file of the same size with a new mtime (``touch``) is read once to
  compare it, then taken as unchanged.

A file that changed between the read and this record gets no record (its next run reads it again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchembed.input import digest
from batchembed.input.identity import file_identity, restat

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.input.units import Unit
    from batchembed.output.manifest import ShardRecord

#: The formats whose files can grow at their end and be read from where they were.
TEXT_FORMATS = ("csv", "jsonl")


def file_ends(unit: Unit, sources: dict[str, SourceFile], shards: list[ShardRecord]) -> dict[str, dict]:
    """``{file: its end}`` for each CSV/JSON Lines file whose rows ``unit`` holds up to the file's end."""
    if unit.files:
        reached = [(sources.get(name), rows) for name, rows in unit.files]
    elif unit.source is not None and unit.eof and unit.end is not None:
        reached = [(unit.source, unit.end)]
    else:
        return {}
    out = {}
    for src, rows in reached:
        if src is not None and src.format in TEXT_FORMATS:
            found = end_of(src, int(rows), shards)
            if found is not None:
                out[src.name] = found
    return out


def previous_end(name: str, rows: int, nbytes: int, shards: list[ShardRecord]) -> dict | None:
    """The end a shard recorded for ``name`` at ``rows`` records and ``nbytes`` bytes, if any."""
    for s in shards:
        found = s.ends.get(name)
        if found and found["rows"] == rows and found["bytes"] == nbytes:
            return found
    return None


def end_of(src: SourceFile, rows: int, shards: list[ShardRecord]) -> dict | None:
    """The end record of ``src`` read to its end at ``rows`` records (None if it changed meanwhile)."""
    size = src.size
    hashed = src.location is None  # a bucket's file is known by its ETag: no need to hash it
    before = previous_end(src.name, *src.tail, shards) if src.tail else None
    if before is not None and before.get("chain"):  # a grown file: only its new bytes are hashed
        cuts = [*before["cuts"], size]
        newline, probed, chained = digest.end_facts(
            src, size, hashed=hashed, previous=before["chain"], start=before["bytes"]
        )
    else:
        cuts = [size]
        held = src.cache.facts_of(src) if src.cache is not None else None  # its bytes, held or as dropped
        newline, probed, chained = held or digest.end_facts(src, size, hashed=hashed)
    record = {
        "rows": rows,
        "bytes": size,
        "grows": bool(newline and src.compression is None),
        "probe": probed,
        "cuts": cuts,
        "chain": chained,
    }
    if hashed and restat(src) != file_identity(src.size, src.mtime_ns, src.etag, src.digest):
        return None  # written while it was read or hashed: the next run reads it again
    return record
