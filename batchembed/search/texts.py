"""The embedded text of the rows a search found, read from the job's inputs when the output does not keep it.

The output holds ids, kept columns and vectors; the text itself is in the output only when ``input.keep``
names the text column. So that a search always shows what a row says, the few rows found are looked up
in the inputs by their id (text form, as the id check compares them; ``file:row`` for generated ids):
one pass over the id and text columns, in record batches (bounded memory), stopping once every id is found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.input.discover import discover
from batchembed.input.read import iter_batches
from batchembed.input.row_ids import generated_ids, id_text
from batchembed.job.templates import text_fields
from batchembed.output.store import storage_options
from batchembed.tasks.texts import build_texts

if TYPE_CHECKING:
    from batchembed.job.config import JobConfig


def input_texts(job: JobConfig, ids: list[str]) -> dict[str, str | None]:
    """The text of each of ``ids`` (text form) in the job's inputs, built as a run builds it (the column, or
    ``input.text``'s template filled in; no prefix); an id no input holds now is left out."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, str | None] = {}
    if not len(wanted):
        return found
    id_column, fields = job.input.id, text_fields(job.input.text)  # a column, or a template's columns
    columns = list(dict.fromkeys([*fields, id_column] if id_column else fields))
    for src in discover(job.input.path, storage_options(job), identity=job.input.identity):
        start = 0
        for batch in iter_batches(src, columns):
            if id_column:
                batch_ids = id_text(batch.column(id_column))
            else:
                batch_ids = generated_ids(src.name, np.arange(start, start + batch.num_rows, dtype=np.int64))
            start += batch.num_rows
            hit = pc.is_in(batch_ids, value_set=wanted)
            if not pc.any(hit).as_py():
                continue
            texts = build_texts(batch.filter(hit), job.input.text)  # as the run built the text it embedded
            found.update(zip(batch_ids.filter(hit).to_pylist(), texts.to_pylist(), strict=True))
            if len(found) == len(wanted):
                return found
    return found
