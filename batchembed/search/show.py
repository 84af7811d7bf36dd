"""How ``search`` prints its rows: an aligned table for a person (long values clipped), or JSON lines."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pyarrow as pa

#: The widest a printed cell gets (a clipped text ends with "…").
CELL = 60


def clip(value: Any, width: int = CELL) -> str:
    """A value on one line, at most ``width`` characters."""
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_hits(hits: pa.Table, table: Any, as_json: bool) -> None:
    """Print the rows found, best first: ``rank``, ``score``, the id, kept columns, and the embedded text
    (clipped) when the job keeps it."""
    rows = hits.to_pylist()
    if as_json:
        for rank, row in enumerate(rows, 1):
            print(json.dumps({"rank": rank, "score": round(float(row["score"]), 6), **_plain(row)}, default=str))
        return
    if not rows:
        print(f"no row of {table.uri} matches")
        return
    names = ["rank", "score", table.id_column, *[c for c in table.shown if c != table.text_column]]
    if table.text_column is not None:
        names.append(table.text_column)
    width = max(shutil.get_terminal_size((120, 24)).columns, 80)
    cells = [[str(rank), f"{row['score']:.4f}", *(clip(row[c]) for c in names[2:])] for rank, row in enumerate(rows, 1)]
    widths = [max(len(n), *(len(r[i]) for r in cells)) for i, n in enumerate(names)]
    if table.text_column is not None:  # the text takes what the terminal has left
        widths[-1] = max(20, min(widths[-1], width - sum(w + 2 for w in widths[:-1])))
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip())
    for cell in cells:
        print("  ".join(clip(c, w).ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "score"}
