"""One job split into parts: which part owns which unit, each part's manifest, the whole job's view.

A part is either a ``--shard I/N`` process or a Ray worker's slice. Ownership is a fixed function of
the unit's name, so the split is the same on every run: range and "files" units go to
``ordinal % N``; a part's retry shard carries the part in its name (``part-r00000-shard-0001-of-0003``).

A ``--shard I/N`` run records its shards in ``_manifest.shard-000I-of-000N.json`` (and its own commit
journal, failed rows and report) under its own lock/lease; ``status`` and ``verify`` read every
part through :func:`load_whole`. One output holds either one unsharded manifest or the N parts of
one split, never both: :func:`refuse_mixing` says so before anything is written.
"""

from __future__ import annotations

import copy
import re

from batchembed.errors import ResumeRefused, UsageError
from batchembed.fs.atomic import TMP_SUFFIX
from batchembed.job.fingerprint import describe_changes, same_job
from batchembed.output.input_diff import GENERATION_SPAN
from batchembed.output.layout import (
    PART_MANIFEST,
    PART_RETRY_SHARD,
    RANGE_SHARD,
    SUCCESS,
    is_shard,
    manifest_names,
    part_suffix,
)
from batchembed.output.manifest import Manifest
from batchembed.output.opening import check_shards, remove_orphans
from batchembed.output.split_plan import SplitPlan, view
from batchembed.output.store.base import OutputStore
from batchembed.output.store.holders import live_writers, part_writer

# a unit name (``part-00007``), a unit's file (``part-00007.parquet``) or a shard file of one
# attempt (``part-00007-1a2b3c4d.parquet``)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N (``UsageError`` naming the problem otherwise)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. --shard 0/4 (I counts from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: I must be in 0..N-1 and N at least 1 (I counts from 0)")
    return index, count


def owner(name: str, count: int) -> int | None:
    """Which of ``count`` parts owns the shard file ``name`` (None: not a unit of a split)."""
    if match := RANGE_SHARD.match(name):
        # by the unit's position within its refresh generation: a unit keeps its owner in every generation
        return int(match.group(1)) % GENERATION_SPAN % count
    if (match := PART_RETRY_SHARD.match(name)) and int(match.group(2)) == count:
        return int(match.group(1))
    return None


def owned_by(part: tuple[int, int]):
    """A predicate: does this shard file name belong to ``part``?"""
    index, count = part
    return lambda name: owner(name, count) == index


def part_names(store: OutputStore) -> dict[tuple[int, int], str]:
    """The ``--shard`` manifests present in the output: {(I, N): file name}."""
    found = {}
    for name in store.list_names():
        if match := PART_MANIFEST.fullmatch(name):
            found[(int(match.group(1)), int(match.group(2)))] = name
    return found


def refuse_mixing(store: OutputStore, part: tuple[int, int] | None) -> None:
    """Refuse (``ResumeRefused``) a run whose kind does not match the output: sharded vs. not, or another N."""
    parts = part_names(store)
    whole = store.size(manifest_names(None)[0]) is not None
    if part is None:
        if parts:
            (i, n) = next(iter(parts))
            raise ResumeRefused(
                f"{store.uri} is being written by --shard I/{n} runs ({parts[(i, n)]}, ...): an unsharded run would "
                f"redo or mix their units. Run every part with --shard 0/{n} ... {n - 1}/{n}, or use another "
                "output.path (or --restart to discard the whole output)."
            )
        return
    index, count = part
    if whole:
        raise ResumeRefused(
            f"{store.uri} holds the output of an unsharded run (_manifest.json): --shard {index}/{count} would mix "
            "two ways of splitting one job. Finish it without --shard, or use another output.path."
        )
    other = sorted({n for _, n in parts if n != count})
    if other:
        raise ResumeRefused(
            f"{store.uri} is split into {other[0]} parts already (--shard I/{other[0]}); --shard {index}/{count} "
            f"would assign units differently. Run with --shard I/{other[0]}, or use another output.path."
        )


def finished_split(store: OutputStore) -> bool:
    """Whether the output is a split whose every part is complete and whose ``_SUCCESS`` is written."""
    parts = part_names(store)
    if not parts or store.size(manifest_names(None)[0]) is not None or not store.exists(SUCCESS):
        return False
    counts = {n for _, n in parts}
    return len(counts) == 1 and every_part_complete(store, counts.pop())


def finished_split_manifest(store: OutputStore, fingerprint: dict) -> Manifest:
    """A finished split as one manifest, for a whole run that has nothing left to do (its job's fingerprint
    must be the split's: ``ResumeRefused`` otherwise, as for any other job's output)."""
    manifest, _ = load_whole(store)
    if not same_job(manifest.fingerprint, fingerprint):
        changes = describe_changes(manifest.fingerprint, fingerprint)
        raise ResumeRefused(
            f"{store.uri} holds the finished output of a different job (written by --shard parts): "
            + "; ".join(changes or ["fingerprint differs"])
            + ". Run with --restart to discard it, or use another output.path."
        )
    return manifest


def open_part(store: OutputStore, fingerprint: dict, restart: bool, part: tuple[int, int]) -> Manifest:
    """Prepare the output for one part (its lock is held) and return the part's manifest (new or resumed).

    Like ``opening.open_output`` but confined to the part: ``--restart`` and the orphan sweep only
    touch the part's own files; another part with a different fingerprint is refused (two jobs mixed).
    """
    store.use_part(part)
    owns = owned_by(part)
    if restart:
        for name in store.list_names():
            base = name.rsplit("/", 1)[-1]
            if is_shard(base) and owns(base.removesuffix(TMP_SUFFIX)):
                store.delete(name)
        store.delete(store.manifest_name)
        store.delete(store.journal_name)
        store.delete(SUCCESS)
    store.prepare()
    for other, name in part_names(store).items():
        if other == part:
            continue
        theirs = _load_part(store, other)
        if theirs is not None and not same_job(theirs.fingerprint, fingerprint):
            raise ResumeRefused(
                f"{store.uri}: part {name} was written for a different job (other inputs or settings); "
                "all parts of one split must run the same job. Use another output.path."
            )
    manifest = Manifest.load(store)
    if manifest is None:
        manifest = Manifest(fingerprint=fingerprint)
        manifest.save(store)
        remove_orphans(store, manifest, owns)
        return manifest
    if not same_job(manifest.fingerprint, fingerprint):
        raise ResumeRefused(
            f"{store.describe(store.manifest_name)} holds output of a different job (inputs or settings changed). "
            "Run with --restart to discard this part, or use another output.path."
        )
    if not manifest.shards:
        manifest.fingerprint = fingerprint  # no shard holds the old kept columns
    manifest.wanted = fingerprint  # a changed input.keep: the part rewrites its shards
    manifest.save(store)
    remove_orphans(store, manifest, owns)
    check_shards(store, manifest)
    return manifest


def _load_part(store: OutputStore, part: tuple[int, int] | None) -> Manifest | None:
    """One part's manifest, read through a copy of the store (the store keeps its own manifest's version)."""
    reader = copy.copy(store)
    reader.use_part(part)
    return Manifest.load(reader)


def load_part(store: OutputStore, part: tuple[int, int]) -> tuple[OutputStore, Manifest] | None:
    """Another part's manifest with a store through which it can be saved again (conditionally)."""
    reader = copy.copy(store)
    reader.use_part(part)
    manifest = Manifest.load(reader)
    return None if manifest is None else (reader, manifest)


def load_whole(store: OutputStore) -> tuple[Manifest | None, dict]:
    """The whole job's manifest: the unsharded one, or every part's merged (with {parts, parts_done})."""
    manifest = _load_part(store, None) if store.size(manifest_names(None)[0]) is not None else None
    if manifest is not None:
        return manifest, {}
    parts = part_names(store)
    if not parts:
        return None, {}
    count = max(n for _, n in parts)
    loaded = [m for p in sorted(parts) if (m := _load_part(store, p)) is not None]
    merged = Manifest(fingerprint=loaded[0].fingerprint)
    for m in loaded:
        merged.shards.extend(m.shards)
        merged.resolved.extend(m.resolved)
        merged.retiring.extend(m.retiring)
        merged.work.update(m.work)
    plan = SplitPlan.read(store)
    if plan is not None:  # the generation every part follows: the shards it keeps or wrote, and its figures
        seen = view(plan, loaded)
        merged.shards, merged.retiring = seen.shards, seen.retiring
        merged.generation, merged.work, merged.refresh = plan.generation, dict(plan.work), dict(plan.refresh)
    done = sum(1 for m in loaded if m.complete)
    merged.complete = done == count
    return merged, {"parts": count, "parts_complete": done, "part_tag": part_suffix((0, count))}


def load_parts(store: OutputStore, count: int, own: tuple[tuple[int, int], Manifest] | None = None) -> list[Manifest]:
    """The manifests of a split's ``count`` parts that exist (``own``: this part's, as it holds it)."""
    found = []
    for index in range(count):
        if own is not None and own[0] == (index, count):
            found.append(own[1])
        elif (m := _load_part(store, (index, count))) is not None:
            found.append(m)
    return found


def parts_left(store: OutputStore, part: tuple[int, int]) -> str:
    """What a part that finished says of the parts not complete yet: still running (a run holds the part's
    lock or lease now) or not running (never started, stopped or killed: someone must run it again)."""
    index, count = part
    writers = live_writers(store)
    running, idle = [], []
    for other in range(count):
        manifest = _load_part(store, (other, count)) if other != index else None
        if other == index or (manifest is not None and manifest.complete and not manifest.unresolved_failures()):
            continue
        (running if part_writer(writers, (other, count)) else idle).append(f"{other}/{count}")
    said = f"part {index}/{count} complete"
    if running:
        said += f"; still running: part {', '.join(running)}"
    if idle:
        said += (
            f"; not complete and not running (never started, stopped or killed): part {', '.join(idle)}; "
            f"run them (--shard {idle[0]} ...) to finish the job"
        )
    return said


def every_part_complete(store: OutputStore, count: int) -> bool:
    """Whether all ``count`` parts have recorded their manifest complete (their failures resolved)."""
    return all_complete([_load_part(store, (index, count)) for index in range(count)], count)


def all_complete(manifests: list[Manifest | None], count: int) -> bool:
    """Whether the ``count`` parts' manifests are all there and complete, their failures resolved."""
    return len(manifests) == count and all(
        m is not None and m.complete and not m.unresolved_failures() for m in manifests
    )
