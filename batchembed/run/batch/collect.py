"""A finished batch's output and error files -> one status (and answer) per item it was sent.

Lines are matched by ``custom_id`` and results within a line by ``index``, never by order. Every
line sent must come back in one of the two files; what does not, or comes back expired, cancelled,
timed out, rate limited or 5xx, is *retry* (sent again in the piece's next attempt). A 4xx for a line
of one item is that item's failure; a 4xx for a line of several items sends them again one per line,
so that the one bad input fails alone.

The two files are read a line at a time (one line is one request's answer), never whole: an output
file of 50,000 float vectors of 1,536 dimensions is about 1.5 GB of JSON, its answers 300 MB as float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import orjson
import pyarrow as pa

from batchembed.errors import APIError, ServerIgnoredSettings
from batchembed.run.batch.items import Items
from batchembed.run.batch.ledger import FAILED, OK, ONLINE, RETRY

#: Line status codes that are the line's own fault (sent again, they fail again).
BAD_REQUEST = frozenset({400, 404, 413, 422})


def custom_id(line: int) -> str:
    """The custom_id of a line (unique within a batch; the batch itself is known by its id)."""
    return f"L{line}"


def line_of(value: object) -> int | None:
    """The line a custom_id names, None for one we never sent."""
    if isinstance(value, str) and value.startswith("L") and value[1:].isdigit():
        return int(value[1:])
    return None


@dataclass
class Collected:
    """An attempt's outcome: the results table and its counts."""

    results: pa.Table
    billed_items: int
    billed_tokens: int
    ok: int
    failed: int
    retry: int
    split: np.ndarray  # per item: send it alone next time (its line got a 4xx)


def lines_of(files: Iterable[IO[bytes]]) -> Iterator[bytes]:
    """Every line of ``files`` (binary, read from where they stand), one ``readline`` at a time."""
    for file in files:
        yield from iter(file.readline, b"")


def collect(items: Items, sent: pa.Table, files: Iterable[IO[bytes]], expired_why: str) -> Collected:
    """Statuses and answers for the items ``sent`` (an attempt's items table) from the batch's output and
    error files (``files``: binary files, read a line at a time)."""
    lines = sent.column("line").to_numpy()
    index = sent.column("index").to_numpy()
    n_lines = int(lines.max()) + 1 if len(lines) else 0
    first = np.searchsorted(lines, np.arange(n_lines))
    count = np.bincount(lines, minlength=n_lines)
    status = np.full(len(lines), RETRY, dtype=object)
    error = np.full(len(lines), expired_why, dtype=object)
    split = np.zeros(len(lines), dtype=bool)
    answers = None  # allocated at the first answer (its size is the vectors' size)
    seen = np.zeros(n_lines, dtype=bool)
    billed_items = billed_tokens = 0
    for raw in lines_of(files):
        if not raw.strip():
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a torn line says nothing: its items stay "retry"
        line = line_of(doc.get("custom_id")) if isinstance(doc, dict) else None
        if line is None or line >= n_lines or seen[line]:
            continue
        seen[line] = True
        at = slice(int(first[line]), int(first[line]) + int(count[line]))
        response = doc.get("response") or {}
        code = response.get("status_code") if isinstance(response, dict) else None
        err = doc.get("error") or {}
        if code == 200:
            billed_items += int(count[line])  # answered: billed, whatever we make of the answer
            try:
                got, tokens = items.parse(response.get("body"), int(count[line]))
            except ServerIgnoredSettings:
                raise  # every answer is of the wrong size: the job's settings, not this line (sending again pays again)
            except APIError as exc:
                error[at] = f"malformed answer: {exc}"
                continue
            if answers is None:
                answers = items.empty(len(lines), got)
            answers[at] = got[index[at]]  # the parser mapped results by index; items sit in index order
            status[at] = OK
            billed_tokens += int(tokens or 0)
            continue
        message = _message(response, err, code)
        if isinstance(code, int) and code in BAD_REQUEST:
            if count[line] == 1:
                status[at], error[at] = FAILED, message
            else:
                split[at], error[at] = True, message
        else:
            error[at] = message  # expired, cancelled, timed out, 429, 5xx: sent again
    ok = int((status == OK).sum())
    failed = int((status == FAILED).sum())
    valid = status == OK
    if answers is None:
        answers = items.empty(len(lines), None)
    results = pa.table(
        {
            "key": sent.column("key"),
            "status": pa.array(status.tolist(), pa.string()),
            "error": pa.array([e if s != OK else None for s, e in zip(status, error, strict=True)], pa.string()),
            items.column: items.answer_array(answers, valid),
        }
    )
    return Collected(results, billed_items, billed_tokens, ok, failed, len(lines) - ok - failed, split)


def finalize(results: pa.Table, last: bool, fallback: str) -> pa.Table:
    """On the last allowed attempt, items still to retry fail (or go online with ``fallback = "online"``)."""
    if not last:
        return results
    status = np.array(results.column("status").to_pylist(), dtype=object)
    final = ONLINE if fallback == "online" else FAILED
    status[status == RETRY] = final
    return results.set_column(1, "status", pa.array(status.tolist(), pa.string()))


def _message(response: object, err: object, code: object) -> str:
    """A failed line's reason, from its error object or its response body."""
    if isinstance(err, dict) and (err.get("code") or err.get("message")):
        return f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip().rstrip(":")
    body = response.get("body") if isinstance(response, dict) else None
    inner = body.get("error") if isinstance(body, dict) else None
    if isinstance(inner, dict):
        return f"HTTP {code}: {inner.get('message') or inner.get('code')}"
    return f"HTTP {code}" if code is not None else "no answer"
