"""The run's side of the table: publish the manifest's shards as the output's Delta table.

A run calls ``delta_publisher(store, job)(shards, tag)`` once every unit is committed; ``verify``
calls ``table_disagreements``. Statistics are read from the footers of the files the table does
not hold yet only, so a refresh that adds two shards to a thousand reads two footers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from batchembed import __version__
from batchembed.job.resolved import resolve_model
from batchembed.output.publish.delta import check_agrees, publish, table_files
from batchembed.output.publish.files import TableFile, read_table_file

if TYPE_CHECKING:
    from batchembed.job.config import JobConfig
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.store.base import OutputStore


def _files(store: OutputStore, shards: Sequence[ShardRecord], published: dict[str, int] | None) -> list[TableFile]:
    out = []
    for s in shards:
        if published is not None and published.get(s.name) == s.size:
            out.append(TableFile(s.name, s.size, s.rows))
        else:
            out.append(read_table_file(store.where, s.name))
    return out


def delta_publisher(store: OutputStore, job: JobConfig) -> Callable[[Sequence[ShardRecord], int], int]:
    """``publish(shards, tag)``: make the output's Delta table exactly ``shards`` (idempotent per tag)."""

    def publish_shards(shards: Sequence[ShardRecord], tag: int) -> int | None:
        current = table_files(store.where)
        if not shards and current is None:
            return None  # nothing written yet and no table: nothing to publish
        files = _files(store, shards, current)
        model = resolve_model(job).name  # the provider's default when the job names none (the local model)
        facts = {"version": __version__, "model": model, "provider": job.model.provider, "publish": tag}
        return publish(store.where, None, files, tag=tag, metadata=facts)

    return publish_shards


def table_disagreements(store: OutputStore, shards: Sequence[ShardRecord]) -> list[str]:
    """Where the Delta table disagrees with the manifest's shards (empty when they agree)."""
    return check_agrees(store.where, None, [TableFile(s.name, s.size, s.rows) for s in shards])
