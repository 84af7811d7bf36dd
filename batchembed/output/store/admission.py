"""Who may write an output now: one whole run, or the parts of one split, never both, never two splits.

Every writer of an output — a whole run, a ``--restart``, a ``--shard I/N`` part, a Ray driver — is
admitted in one step under the output's *gate*, a short output-wide mutex (an ``flock`` on
``_lease/admit.lock`` locally; a create-only ``_lease/admit.json`` object, expiring, in buckets):

1. it lists the writers that hold a live lock or lease on the output (expired leases in buckets are
   retired on the way, so a paused holder cannot renew them and come back);
2. it refuses if one of another kind is live: a whole run (or ``--restart``, or a Ray driver) while
   any part runs; a part while a whole run runs or while a part of another split (``--shard J/M``,
   ``M != N``) runs;
3. it takes its own lock/lease (a run of the same kind that is live is refused there, as before);
4. it leaves the gate (in buckets only if the gate is still its own: a writer paused inside the gate
   past its term gives its lease back and is refused).

Writers started together are admitted one at a time, so exactly one kind wins; a writer started
later sees the live lease of the one admitted first. What outlives the writers — the manifests of a
split and of a whole run — is checked after admission by ``parts.refuse_mixing``: a live
lease covers the moment between admission and a writer's first manifest.
"""

from __future__ import annotations

from batchembed.output.layout import Part
from batchembed.output.store.base import OutputStore
from batchembed.output.store.locks import LeaseLost, OutputLocked, WriterLock


def describe(part: Part) -> str:
    """How a writer is called in messages."""
    return "a whole run" if part is None else f"--shard {part[0]}/{part[1]}"


def refusal(uri: str, part: Part, live: dict[Part, str]) -> str | None:
    """Why writer ``part`` may not write while the writers ``live`` ({part: holder}) do; None if it may.

    A live writer of the same kind (the same lease) is left to the lease's own refusal."""
    if part is None:
        parts = sorted(p for p in live if p is not None)
        if not parts:
            return None
        who = "; ".join(f"{describe(p)}: {live[p]}" for p in parts[:3]) + ("; ..." if len(parts) > 3 else "")
        return (
            f"{uri} is being written by --shard parts right now ({who}). A whole run would redo their units, "
            "and starting over would delete them. Wait for the parts to finish, or stop them, then "
            "run again."
        )
    if None in live:
        return (
            f"{uri} is being written by a whole run right now ({live[None]}); --shard {part[0]}/{part[1]} would "
            "write the same units. Wait for that run to finish, or stop it, then run again."
        )
    others = sorted(p for p in live if p is not None and p[1] != part[1])
    if others:
        index, count = others[0]
        return (
            f"{uri} is being split into {count} parts right now (--shard {index}/{count}: {live[others[0]]}); "
            f"--shard {part[0]}/{part[1]} would assign units differently. Run the parts with --shard I/{count}, "
            "or wait for them to finish."
        )
    return None


def admit(store: OutputStore, part: Part) -> WriterLock:
    """Admit writer ``part`` (None: a whole run) to ``store``: its lock/lease taken, or ``OutputLocked``."""
    with store.gate() as gate:
        live = store.live_writers()
        why = refusal(store.uri, part, {p: h for p, h in live.items() if p != part})
        if why:
            raise OutputLocked(why)
        lock = store.acquire(part)
        try:
            gate.check()  # still ours: nobody was admitted over this writer's shoulder
        except LeaseLost:
            store.release()
            raise OutputLocked(
                f"{store.uri}: this run was paused while it was being admitted and another run started meanwhile; "
                "run again once that run is done."
            ) from None
    return lock
