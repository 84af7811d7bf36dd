"""The job's vectors as a run knows them, owned in one place: their width, their check, their lengths.

The width is ``model.dimensions`` when the job sets it, else learned once from the first vectors the
run sees — an answer, an interrupted run's journal, the canary, a batch's results, a Ray worker's
report — through ``learn``, and nothing else writes it. ``check`` (``normalize.VectorCheck``) is what
every answer goes through; ``norms`` the lengths written per unit, recorded at each commit.
"""

from __future__ import annotations

from typing import Any

from batchembed.tasks.normalize import NormTally, VectorCheck, written_norms


class Vectors:
    """The width, check and written lengths of one job's vectors (the embed task's; rerank has none)."""

    def __init__(self, configured: int | None, normalize: str) -> None:
        self._dim = configured
        self.check = VectorCheck(normalize)  # the runner tells it the model's unit_norm
        self.norms = NormTally()  # lengths of the vectors written, per unit (recorded at its commit)

    @property
    def dim(self) -> int | None:
        """The vectors' width, None until configured or learned."""
        return self._dim

    def learn(self, width: int) -> bool:
        """Take ``width`` as the vectors' width if none is known yet; whether it agrees with the one known."""
        if self._dim is None:
            self._dim = int(width)
            return True
        return self._dim == int(width)

    def record(self, manifest: Any, unit: str) -> None:
        """At a unit's commit: its written lengths into the manifest."""
        self.norms.record(manifest, unit)

    def report(self, manifest: Any) -> dict[str, Any]:
        """What ``_report.json`` says about the vectors: ``normalize`` (mode, the model's unit norm, whether
        and how many vectors were normalised here) and ``vector_norms`` (min/max length of the vectors in the
        shards the output holds now)."""
        return {"normalize": self.check.describe(), "vector_norms": written_norms(manifest)}
