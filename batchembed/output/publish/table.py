"""The run's side of the table: publish the manifest's shards as the output's Delta table.

A run calls ``delta_publisher(store, job)(shards, tag)`` once every unit is committed; ``verify``
calls ``table_disagreements``. Statistics are read from the footers of the files the table does
not hold yet only, so a refresh that adds two shards to a thousand reads two footers; the table itself
is opened once per publish (``publish`` hands its current files to ``files``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from batchembed import __version__
from batchembed.job.resolved import resolve_model
from batchembed.output.publish.delta import check_agrees, publish
from batchembed.output.publish.files import TableFile, read_table_file

if TYPE_CHECKING:
    from batchembed.job.config import JobConfig
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.store.base import OutputStore


def _files(
    store: OutputStore, shards: Sequence[ShardRecord | TableFile], published: dict[str, int] | None
) -> list[TableFile]:
    out = []
    for s in shards:
        if published is not None and published.get(s.name) == s.size:
            out.append(TableFile(s.name, s.size, s.rows))
        else:
            out.append(read_table_file(store.where, s.name))
    return out


def delta_publisher(store: OutputStore, job: JobConfig) -> Callable[..., int | None]:
    """``publish(files, tag, releasing=())``: make the output's Delta table exactly ``files`` (shard records,
    or ``TableFile`` s of files others compacted them into), idempotent per tag; of the files the table holds
    and ``files`` does not, only batchembed's own and those in ``releasing`` may leave it."""

    def publish_shards(
        shards: Sequence[ShardRecord | TableFile], tag: int, releasing: Iterable[str] = ()
    ) -> int | None:
        def files(current: dict[str, int] | None) -> list[TableFile] | None:
            if not shards and current is None:
                return None  # nothing written yet and no table: nothing to publish
            return _files(store, shards, current)

        model = resolve_model(job).name  # the provider's default when the job names none (the local model)
        facts = {"version": __version__, "model": model, "provider": job.model.provider, "publish": tag}
        # the table opened once per attempt
        return publish(store.where, None, files, tag=tag, metadata=facts, releasing=releasing)

    return publish_shards


def table_disagreements(store: OutputStore, shards: Sequence[ShardRecord]) -> list[str]:
    """Where the Delta table disagrees with the manifest's shards (empty when they agree)."""
    return check_agrees(store.where, None, [TableFile(s.name, s.size, s.rows) for s in shards])
