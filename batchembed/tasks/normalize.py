"""Make every written vector what the model promises: unit length when the model's vectors are.

A Matryoshka model's full vectors are L2-normalised, and so are the cuts OpenAI and Fireworks return
for ``dimensions``; some servers (Infinity) cut without normalising again, and a dot-product search
over such vectors ranks by each row's leftover length. So, once per job, batchembed learns whether
the model's full vectors are unit length (``learn_unit_norm``: the catalogue or the local model
knows; otherwise the canary's full vector is looked at), records it in the manifest
(``server["unit_norm"]``), and ``[model] normalize`` decides what happens to an answer:

* ``auto`` (default): when the model's full vectors are unit length, vectors that are not (a cut
  without normalising) are L2-normalised here; a model whose vectors are not unit is left alone;
* ``always``: every vector that is not unit length is normalised;
* ``never``: vectors are written as the server sent them.

In every mode an all-zero or non-finite vector is a fault of its request (``InvalidVectors``:
retried, then the request is split until the row is alone, which is then dead-lettered to
``_failed``): it has no direction, and normalising it would make NaN.

``VectorCheck.check`` runs on every answer (vectorised: the lengths come with the answer, measured
by the provider as it decoded the answer, or are measured here in one call). ``NormTally`` keeps the min/max length of
the vectors written into each unit's shard; a commit records them in the manifest
(``server["vector_norms"]``), which ``_report.json`` and ``status`` show.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from batchembed.errors import APIError, InvalidVectors
from batchembed.providers.base import vector_norms

#: A length within this of 1 is unit length (float32 rounding, int8-quantised models: ~1e-4).
UNIT_TOLERANCE = 1e-3


def is_unit(norm: float) -> bool:
    """Whether one vector length counts as unit length."""
    return bool(abs(norm - 1.0) <= UNIT_TOLERANCE)


def check_vectors(vectors: np.ndarray, norms: np.ndarray) -> None:
    """Raise ``InvalidVectors`` naming the first all-zero or non-finite vector of an answer."""
    bad = ~np.isfinite(norms) | (norms == 0)
    if not bad.any():
        return
    at = int(np.flatnonzero(bad)[0])
    count = int(bad.sum())
    if np.isfinite(vectors[at]).all():
        what = "is all zeros" if not vectors[at].any() else "has a length too small or too large to measure"
    else:
        what = "holds NaN or infinite values"
    raise InvalidVectors(f"vector {at} of the answer {what} ({count} such vectors in it)", items=np.flatnonzero(bad))


class VectorCheck:
    """What happens to each answer's vectors: the faults of every mode, and ``[model] normalize``.

    ``unit_norm`` is whether the model's full vectors are unit length (None until learned: then
    ``auto`` normalises nothing). ``say`` is told once, the first time vectors are normalised.
    """

    def __init__(self, mode: str, say: Callable[[str], None] | None = None) -> None:
        self.mode = mode
        self.unit_norm: bool | None = None
        self.say = say or (lambda _line: None)
        self.vectors_normalized = 0
        self.answers_normalized = 0

    @property
    def active(self) -> bool:
        """Whether vectors that are not unit length are normalised here."""
        return self.mode == "always" or (self.mode == "auto" and bool(self.unit_norm))

    def check(self, vectors: np.ndarray, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An answer's vectors as they are to be written, and their lengths (raises ``InvalidVectors``).

        ``norms``: the lengths when already measured (the provider measures them as it decodes)."""
        if norms is None:
            norms = vector_norms(vectors)
        check_vectors(vectors, norms)
        if not self.active:
            return vectors, norms
        off = np.abs(norms - 1.0) > UNIT_TOLERANCE
        if not off.any():
            return vectors, norms
        out = vectors / norms[:, None].astype(vectors.dtype, copy=False)  # a new matrix: answers may be read-only
        self._normalized(int(off.sum()), norms[off])
        return out, vector_norms(out)  # what is written: lengths 1 within float32 rounding

    def _normalized(self, count: int, lengths: np.ndarray) -> None:
        first = self.answers_normalized == 0
        self.answers_normalized += 1
        self.vectors_normalized += count
        if first:
            low, high = float(lengths.min()), float(lengths.max())
            although = " although the model's full vectors are" if self.mode == "auto" else ""
            keep = '; "never" keeps them as sent' if self.mode == "auto" else ""
            self.say(
                f"the server's vectors are not unit length (lengths {low:.3f}..{high:.3f} in the first answer)"
                f'{although}: batchembed L2-normalises them before writing (model.normalize = "{self.mode}"{keep}); '
                "recorded in _report.json and the shards' metadata"
            )

    def describe(self) -> dict[str, Any]:
        """What ``_report.json`` and the shards' metadata record about it."""
        return {
            "mode": self.mode,
            "model_unit_norm": self.unit_norm,
            "normalizes_here": self.active,
            "vectors_normalized": self.vectors_normalized,
        }


class NormTally:
    """Min/max length of the vectors written per unit (any thread); a commit records its unit's."""

    def __init__(self) -> None:
        self._units: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def add(self, unit: str, norms: np.ndarray) -> None:
        """The lengths of vectors written into ``unit``'s shard."""
        if not len(norms):
            return
        low, high = float(norms.min()), float(norms.max())
        with self._lock:
            was = self._units.get(unit)
            self._units[unit] = (low, high) if was is None else (min(was[0], low), max(was[1], high))

    def record(self, manifest: Any, unit: str) -> None:
        """Merge ``unit``'s lengths into ``manifest.server["vector_norms"]`` (saved with the manifest).

        Each unit's lengths are kept (``vector_norms_by_unit``), so the figures describe the shards the
        output holds (``written_norms``): a shard a refresh replaced no longer counts. ``shards`` counts
        the shards the figures cover: a run that ends without saving the manifest (stopped, killed, rows
        failed) keeps its lengths in its ``_report.json`` only, so ``status`` says how many of the
        output's shards its figures describe."""
        with self._lock:
            got = self._units.pop(unit, None)
        if got is None:
            return
        replaced = {s.unit_name for s in manifest.retiring}
        by_unit = {k: v for k, v in (manifest.server.get("vector_norms_by_unit") or {}).items() if k not in replaced}
        by_unit[unit.removesuffix(".parquet")] = [round(got[0], 6), round(got[1], 6)]  # as ShardRecord.unit_name
        manifest.server["vector_norms_by_unit"] = by_unit
        manifest.server["vector_norms"] = _summary(list(by_unit.values()))


def _summary(lengths: list[list[float]]) -> dict[str, Any] | None:
    if not lengths:
        return None
    return {"min": min(a for a, _ in lengths), "max": max(b for _, b in lengths), "shards": len(lengths)}


def written_norms(manifest: Any) -> dict[str, Any] | None:
    """The min/max length of the vectors in the shards ``manifest`` holds now, and how many shards that
    covers (an output written before the lengths were kept per unit: its one recorded figure)."""
    if manifest is None:
        return None
    by_unit = manifest.server.get("vector_norms_by_unit")
    if by_unit is None:
        return manifest.server.get("vector_norms")
    held = {s.unit_name for s in manifest.shards}
    return _summary([v for k, v in by_unit.items() if k in held])


async def learn_unit_norm(
    manifest: Any,
    *,
    known: bool | None,
    canary: np.ndarray,
    full_width: bool,
    probe: Callable[[], Awaitable[np.ndarray]] | None,
    say: Callable[[str], None] = lambda _line: None,
) -> bool | None:
    """Whether the model's full vectors are unit length, learned once per job and kept in the manifest.

    In order: what the manifest already records (an earlier run of the job); ``known`` (the catalogue's
    preset or the local model's own files); the canary's own vector when it is the full vector
    (``full_width``: the job asks for no ``dimensions``); else ``probe()``, the canary text's full
    vector asked for once (without ``dimensions``). None when nothing can tell (no probe, or the
    server refused it: said, and not recorded, so the next run asks again).
    """
    server = manifest.server
    if isinstance(server.get("unit_norm"), bool):
        return server["unit_norm"]
    if known is not None:
        server["unit_norm"], server["unit_norm_by"] = known, "the catalogue or the local model's files"
        return known
    if full_width:
        vector, by = canary, "canary"
    elif probe is not None:
        try:
            vector, by = await probe(), "canary's full vector"
        except APIError as exc:
            say(
                f"could not learn whether the model's full vectors are unit length (the canary without "
                f"`dimensions`: {exc}); vectors are written as the server sends them unless model.normalize = "
                '"always"'
            )
            return None
    else:
        return None
    norm = float(vector_norms(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0])
    server["unit_norm"], server["unit_norm_by"] = is_unit(norm), f"{by}: length {norm:.4f}"
    return server["unit_norm"]
