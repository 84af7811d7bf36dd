"""Changed CSV and JSON Lines files that only grew, or were only touched: their shards stay.

A daily export is rewritten with its old rows first and new ones after, or only touched; its size and
mtime change either way. For a changed CSV or JSON Lines file whose last rows a shard holds
(``ShardRecord.ends``, recorded by ``file_ends`` at that commit), the refresh looks closer before it
retires anything:

* **grown**: bigger now, and the bytes its committed rows were read from are still there (the probe
  blocks of them, or with ``input.identity = "content"`` every byte of them, hash as before). Its
  shards are kept and only its new records are read, from the byte where the old ones ended.
* **touched**: the same size and, read once, the same bytes (the recorded chain digest): unchanged.
  Its new identity is recorded, so the next run does not read it at all.
* anything else stays **changed**: its shards are retired and it is read again whole (texts already in
  the output are still not bought again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchembed.input import digest
from batchembed.input.identity import file_identity
from batchembed.output.file_ends import TEXT_FORMATS

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.manifest import ShardRecord


def recorded_end(name: str, shards: list[ShardRecord]) -> dict | None:
    """Where the committed rows of ``name`` ended, if the shards hold all of them: the end recorded by
    the shard holding its last row, when its rows 0..end are all committed."""
    spans, found = [], None
    for s in shards:
        if s.kind == "range" and s.file == name:
            spans.append((s.start, s.end))
        elif s.kind == "files":
            spans += [(0, int(rows)) for f, rows in s.files if f == name]
        end = s.ends.get(name)
        if end and (found is None or end["rows"] > found["rows"]):
            found = end
    if found is None:
        return None
    at = 0
    for start, end in sorted(spans):
        if start > at:
            return None  # a hole: some rows of it are not committed
        at = max(at, end)
    return found if at == found["rows"] else None


def _bytes_kept(src: SourceFile, end: dict, exact: bool) -> bool:
    """Whether the file still starts with the bytes its committed rows were read from."""
    if exact and end.get("chain"):
        return digest.chain(src, end["cuts"]) == end["chain"]
    return end.get("probe") is not None and digest.probe(src, end["bytes"]) == end["probe"]


def settle(changed: list[str], sources: list[SourceFile], shards: list[ShardRecord], recorded: dict[str, dict]):
    """Split ``changed`` file names into (still changed, grown, touched: {name: its identity now}).

    ``recorded``: each file's identity as the shards recorded it."""
    by_name = {src.name: src for src in sources}
    still, grown, touched = [], [], {}
    for name in changed:
        src = by_name.get(name)
        end = recorded_end(name, shards) if src is not None and src.format in TEXT_FORMATS else None
        if end is None:
            still.append(name)
            continue
        # a digest identity that differs is a change of content, whatever the mtime says
        exact = src.digest is not None and "xxh3" in recorded.get(name, {})
        if src.size == end["bytes"] and not exact and end.get("chain"):
            if digest.chain(src, end["cuts"]) == end["chain"]:
                touched[name] = file_identity(src.size, src.mtime_ns, src.etag, src.digest)
                continue
        elif src.size > end["bytes"] and end.get("grows") and src.compression is None:  # noqa: SIM102
            if _bytes_kept(src, end, exact=src.digest is not None):
                grown.append(name)
                continue
        still.append(name)
    return still, grown, touched
