"""``batchembed search JOB "text"``: the nearest rows of a job's output to a text, a minute after the run.

The text is embedded by the job's own model with the job's own settings (``query``: the query role and
instruction where the model has one), then the output's current Delta version is scanned in record
batches (``scan``: bounded memory, whatever the table's size) for the ``k`` rows of highest cosine
similarity, optionally among the rows a filter over the kept columns selects (``--where``, polars' SQL
expressions). ``show`` prints them as a table or as JSON lines, with each row's text (clipped): kept in the
output, or looked up in the inputs by id (``texts``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from batchembed.exitcodes import ExitCode
from batchembed.job.config import JobConfig
from batchembed.job.templates import text_fields
from batchembed.search.query import query_for
from batchembed.search.scan import nearest, open_table
from batchembed.search.show import print_hits
from batchembed.search.texts import input_texts

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
    if table.text_column is None and hits.num_rows:  # the output does not keep the text: the inputs say it
        ids = [str(i) for i in hits.column(table.id_column).to_pylist()]
        found = input_texts(job, ids)
        said = [found.get(i) for i in ids]
        name = job.input.text if job.input.text in text_fields(job.input.text) else "text"  # a template: "text"
        name = name if name not in hits.column_names else "_text"
        hits = hits.append_column(name, pa.array(said, pa.string()))
        table.text_column = name
    print_hits(hits, table, as_json)
    return ExitCode.OK
