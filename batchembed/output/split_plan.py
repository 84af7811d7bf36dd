"""The refresh generation of a ``--shard I/N`` split, planned once for every part (``_split.json``).

Which part owns a unit is a function of the unit's ordinal in its generation (``parts.owner``), and the
ordinals follow from the inputs and from which rows the output holds already: the walk
(``input.chunks``) skips committed ranges and numbers the rest in order. If each part numbered a
generation from its own manifest, rows held by another part would look uncommitted to it, be numbered
again, owned by someone, and written twice. So a generation is planned once, under the output's gate,
and every part follows that plan:

* ``generation``: one more than any part (or plan) had before;
* ``work``: the identities of the input files it was planned over;
* ``kept``: the shards, of every part, that stay — those whose input files are unchanged, no two
  holding the same rows (a part still running an older plan may have written rows a newer plan gave
  to another part: the newer shard wins, the older one leaves with its part's next run);
* ``refresh``: the generation's figures (``figures``: the files by state, rows by id once complete).

Every part walks the same view — the kept shards of all parts, plus this generation's units committed
so far — so unit numbering and ownership are the same in every part, and a part never writes rows
another part's manifest holds. A part *joins* the plan by retiring its own shards the plan does not
keep. A plan over other inputs, or whose kept shards are gone (a part run with ``--restart``), is
replaced by a new generation.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from batchembed.output.input_diff import GENERATION_SPAN, InputDiff, diff_inputs, plan_identities
from batchembed.output.layout import SPLIT_PLAN
from batchembed.output.manifest import Manifest, ShardRecord

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.store.base import OutputStore

_ORDINAL = re.compile(r"part-(\d+)$")


@dataclass
class SplitPlan:
    """One generation of a split, as every part follows it."""

    generation: int
    work: dict[str, dict]
    kept: list[str] = field(default_factory=list)
    refresh: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store: OutputStore) -> SplitPlan | None:
        """The output's plan, None when there is none (or it cannot be read: a new one replaces it)."""
        raw = store.read_bytes(SPLIT_PLAN)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return cls(int(doc["generation"]), dict(doc["work"]), list(doc["kept"]), dict(doc.get("refresh") or {}))
        except (ValueError, KeyError, TypeError):
            return None

    def write(self, store: OutputStore) -> None:
        """Save the plan whole (under the output's gate: one part at a time plans)."""
        store.write_bytes(SPLIT_PLAN, json.dumps(asdict(self), sort_keys=True).encode())

    def first(self) -> int:
        """The ordinal of this generation's first unit."""
        return self.generation * GENERATION_SPAN


def ordinal(shard: ShardRecord) -> int | None:
    """The unit ordinal of a range or files shard (None for a retry shard)."""
    match = _ORDINAL.match(shard.unit_name)
    return int(match.group(1)) if match and shard.kind != "retry" else None


def covers(shard: ShardRecord) -> list[tuple[str, int, int]]:
    """The input rows a range or files shard holds: [(file, first row, end)] (a files shard: whole files)."""
    if shard.kind == "files":
        return [(name, 0, int(rows)) for name, rows in shard.files]
    if shard.kind == "range" and shard.file is not None:
        return [(shard.file, shard.start, shard.end)]
    return []


def disjoint(shards: list[ShardRecord]) -> list[ShardRecord]:
    """The shards to keep when some hold the same rows: the newest unit first, no row held twice."""
    taken: dict[str, list[tuple[int, int]]] = {}
    keep = []
    for s in sorted(shards, key=lambda s: -(ordinal(s) or 0)):
        rows = covers(s)
        if any(a < e and s0 < b for f, s0, e in rows for a, b in taken.get(f, [])):
            continue
        for f, s0, e in rows:
            taken.setdefault(f, []).append((s0, e))
        keep.append(s)
    return keep


def unchanged(shard: ShardRecord, work: dict[str, dict]) -> bool:
    """Whether every input file the shard holds rows of is as it was when the shard read it."""
    return all(work.get(name) == identity for name, identity in shard.inputs.items())


def follows(plan: SplitPlan | None, parts: list[Manifest], sources: list[SourceFile]) -> bool:
    """Whether ``plan`` is this run's: planned over the inputs found now, every shard it keeps still held."""
    if plan is None or plan.work != plan_identities(sources):
        return False
    held = {s.name for m in parts for s in m.shards}
    return set(plan.kept) <= held and all(m.generation <= plan.generation for m in parts)


def whole(parts: list[Manifest], previous: SplitPlan | None) -> Manifest:
    """Every part's shards as one manifest (what the whole job held before this generation)."""
    work: dict[str, dict] = {}
    for m in parts:
        work.update(m.work)
    if previous is not None:
        work.update(previous.work)
    fingerprint = parts[0].fingerprint if parts else {}
    return Manifest(fingerprint=fingerprint, shards=[s for m in parts for s in m.shards], work=work)


def propose(
    parts: list[Manifest], previous: SplitPlan | None, sources: list[SourceFile], count: int
) -> tuple[SplitPlan, InputDiff]:
    """The plan this run would write (nothing is written), with the whole job's diff against the inputs.

    Nothing committed anywhere: the first run's plan (no generation needed). A split of ``count`` parts
    from before plans existed, every part complete over the same inputs: adopted as it is. Otherwise a
    new generation keeping every unchanged shard of every part, none twice."""
    now = plan_identities(sources)
    held = whole(parts, previous)
    diff = diff_inputs(held, sources)
    generations = [m.generation for m in parts] + ([previous.generation] if previous else [])
    top = max(generations, default=0)
    if not held.shards and not any(m.retiring for m in parts):
        return SplitPlan(top, now), InputDiff(added=sorted(now))
    settled = (
        previous is None
        and len(parts) == count
        and all(m.complete and m.generation == top and m.work == now for m in parts)
    )
    candidates = [s for s in held.shards if s.kind != "retry" and unchanged(s, now)]
    kept = disjoint(candidates)
    return SplitPlan(top if settled else top + 1, now, sorted(s.name for s in kept)), diff


def view(plan: SplitPlan, parts: list[Manifest]) -> Manifest:
    """What every part's walk sees in ``plan``'s generation: the kept shards of all parts and the units of
    the generation committed so far (``shards``); every other shard (``retiring``: the vectors a refresh
    may reuse); the failure files any part has resolved."""
    keep = set(plan.kept)
    first, end = plan.first(), plan.first() + GENERATION_SPAN
    shards, others, resolved = [], [], []
    for m in parts:
        joined = m.generation == plan.generation and m.work == plan.work
        resolved += m.resolved
        for s in m.shards:
            o = ordinal(s)
            if s.name in keep or (joined and o is not None and first <= o < end):
                shards.append(s)
            elif s.kind == "retry" and unchanged(s, plan.work):
                shards.append(s)  # failed rows answered later: ids for the id check, never a range
            else:
                others.append(s)
        others += m.retiring
    fingerprint = parts[0].fingerprint if parts else {}
    return Manifest(
        fingerprint=fingerprint,
        shards=shards,
        retiring=others,
        resolved=list(dict.fromkeys(resolved)),
        generation=plan.generation,
        work=plan.work,
    )


def join(manifest: Manifest, plan: SplitPlan) -> bool:
    """Move a part's manifest into ``plan``'s generation (the caller saves it): its shards the plan does not
    keep are retired (and retry shards that answered their failed rows, or whose files changed), their
    resolved failures opened again. False when it is in that generation already."""
    if manifest.generation == plan.generation and manifest.work == plan.work:
        return False
    keep = set(plan.kept)
    leaving = [s for s in manifest.shards if s.kind != "retry" and s.name not in keep]
    gone = {s.failed_file for s in leaving if s.failed_file}
    leaving += [
        s for s in manifest.shards if s.kind == "retry" and (not unchanged(s, plan.work) or gone & set(s.resolves))
    ]
    names = {s.name for s in leaving}
    lost = {r for s in leaving for r in s.resolves}
    manifest.resolved = [r for r in manifest.resolved if r not in lost]
    manifest.retiring.extend(leaving)
    manifest.shards = [s for s in manifest.shards if s.name not in names]
    manifest.generation = plan.generation
    manifest.work = plan.work
    manifest.complete = False
    return True


def overlapping(shards: list[ShardRecord]) -> str | None:
    """The first two shards that hold the same input rows, described (None: no row is held twice)."""
    taken: dict[str, list[tuple[int, int, str]]] = {}
    for s in shards:
        for f, s0, e in covers(s):
            for a, b, other in taken.get(f, []):
                if a < e and s0 < b:
                    return f"{other} and {s.name} both hold rows of {f}"
            taken.setdefault(f, []).append((s0, e, s.name))
    return None
