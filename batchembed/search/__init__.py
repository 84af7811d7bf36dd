"""``batchembed search JOB "text"``: the nearest rows of a job's output to a text, a minute after the run.

The text is embedded by the job's own model with the job's own settings (``query``: the query role and
instruction where the model has one), then the output's current Delta version is scanned in record
batches (``scan``: bounded memory, whatever the table's size) for the ``k`` rows of highest cosine
similarity, optionally among the rows a filter over the kept columns selects (``--where``, polars' SQL
expressions). ``show`` prints them as a table or as JSON lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchembed.exitcodes import ExitCode
from batchembed.job.config import JobConfig
from batchembed.search.query import query_for
from batchembed.search.scan import nearest, open_table
from batchembed.search.show import print_hits

if TYPE_CHECKING:
    from batchembed.providers.transport import Transport


def search_command(
    job: JobConfig,
    text: str,
    k: int = 10,
    where: str | None = None,
    as_json: bool = False,
    transport: Transport | None = None,
) -> int:
    """Print the ``k`` rows of ``job``'s output nearest to ``text`` (among those ``where`` selects)."""
    table = open_table(job)
    where_filter = table.filter_for(where)
    vector = query_for(job, text, table, transport)
    hits = nearest(table, vector, k, where_filter)
    print_hits(hits, table, as_json)
    return ExitCode.OK
