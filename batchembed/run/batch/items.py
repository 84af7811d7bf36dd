"""What a task's work items become in a batch: items rows, JSONL line bodies, and answers back.

An *item* is what the online tier would send as one input: a distinct text (embed) or a
(query, document) pair (rerank), named by the task's journal key (16 bytes). Items travel in
*lines* (one request of the batch file): up to ``batch_inputs`` texts per line for embed, one
query's documents per line for rerank. The answer of a line is mapped back by each result's
``index``, never by order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from batchembed.errors import MalformedResponse
from batchembed.output.shard_writer import vector_array
from batchembed.providers.openai_compat import cut_dimensions, parse_answer
from batchembed.providers.rerank import parse_scores
from batchembed.run.batch.shapes import OpenAIShape
from batchembed.tasks import Piece, Request
from batchembed.tasks.batching import pack
from batchembed.tasks.memo import key_array

ITEMS_SCHEMA = pa.schema(
    [
        ("line", pa.int32()),
        ("index", pa.int32()),
        ("key", pa.binary(16)),
        ("text", pa.string()),
        ("query", pa.string()),
        ("tokens", pa.int64()),
    ]
)


class Items:
    """A task's items in a batch; ``EmbedItems`` and ``RerankItems`` fill in the differences."""

    column = "vector"
    rerank = False

    def __init__(self, task: Any, batch_inputs: int, batch_tokens: int) -> None:
        self.task = task
        self.codec = task.journal_codec()
        self.batch_inputs = batch_inputs
        self.batch_tokens = batch_tokens

    def of(self, request: Request) -> tuple[list[bytes], list[str], str | None, np.ndarray]:
        """A request's items: keys, texts (documents), the query (rerank) and tokens per item."""
        raise NotImplementedError

    def lines(self, tokens: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The line of each item (items of one group stay together)."""
        raise NotImplementedError

    def body(self, texts: list[str], query: str | None) -> dict[str, Any]:
        """A line's request body (without the model and options, which the shape adds)."""
        raise NotImplementedError

    def parse(self, body: Any, n: int) -> tuple[np.ndarray, int | None]:
        """A line's 200 answer: ``n`` answers by index, and the tokens it reports."""
        raise NotImplementedError

    def answer_array(self, answers: np.ndarray, valid: np.ndarray) -> pa.Array:
        """The results file's answer column."""
        raise NotImplementedError

    def answers_of(self, table: pa.Table) -> np.ndarray:
        """The answer column of a results file as numpy."""
        raise NotImplementedError

    def rows(self, piece: Piece, items: np.ndarray) -> int:
        """Input rows answered by ``items`` of ``piece`` (for the progress counts)."""
        return len(items)

    def table(self, keys, texts, queries, tokens, lines) -> pa.Table:
        """An items file: one row per item, in line order; ``index`` is its place in its line."""
        lines = np.asarray(lines, dtype=np.int32)
        order = np.argsort(lines, kind="stable")
        lines = lines[order]
        starts = np.r_[0, np.flatnonzero(np.diff(lines)) + 1] if len(lines) else np.zeros(0, np.int64)
        index = np.arange(len(lines)) - np.repeat(starts, np.diff(np.r_[starts, len(lines)]))
        take = order.tolist()
        return pa.table(
            {
                "line": pa.array(lines, pa.int32()),
                "index": pa.array(index, pa.int32()),
                "key": key_array(np.array([keys[i] for i in take], dtype=object)),
                "text": pa.array([texts[i] for i in take], pa.string()),
                "query": pa.array([queries[i] for i in take], pa.string()),
                "tokens": pa.array(np.asarray(tokens, np.int64)[order], pa.int64()),
            },
            schema=ITEMS_SCHEMA,
        )


def _reported_tokens(doc: Any) -> int | None:
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if isinstance(usage, dict):
        for name in ("prompt_tokens", "total_tokens"):
            if isinstance(usage.get(name), int):
                return int(usage[name])
    return None


class EmbedItems(Items):
    """Distinct texts; a line holds up to ``batch_inputs`` of them under ``batch_tokens``."""

    def __init__(
        self, task: Any, batch_inputs: int, batch_tokens: int, dimensions: int | None, cut: int | None = None
    ) -> None:
        super().__init__(task, batch_inputs, batch_tokens)
        self.dimensions = dimensions  # checked against every answer (None: the first answer's size)
        self.cut = cut  # dimensions_by = "client": Matryoshka vectors cut to this size here

    def of(self, request: Request):
        work = request.piece.work
        items = request.items.tolist()
        keys = self.codec.keys(request).to_pylist()
        return keys, [work.texts[i] for i in items], None, work.tokens[request.items]

    def lines(self, tokens: np.ndarray, groups: np.ndarray) -> np.ndarray:
        out = np.zeros(len(tokens), dtype=np.int32)
        for line, (a, b) in enumerate(pack(np.asarray(tokens), self.batch_inputs, self.batch_tokens)):
            out[a:b] = line
        return out

    def body(self, texts: list[str], query: str | None) -> dict[str, Any]:
        return {"input": texts}

    def parse(self, body: Any, n: int) -> tuple[np.ndarray, int | None]:
        vectors, tokens, _ = parse_answer(orjson.dumps(body), n, self.dimensions)
        if self.cut is not None:
            vectors = cut_dimensions(vectors, self.cut)
        elif self.dimensions is None:
            self.dimensions = vectors.shape[1]
        return vectors, tokens if tokens is not None else _reported_tokens(body)

    def answer_array(self, answers: np.ndarray, valid: np.ndarray) -> pa.Array:
        return vector_array(answers, valid)

    def answers_of(self, table: pa.Table) -> np.ndarray:
        col = table.column(self.column).combine_chunks()
        dim = col.type.list_size
        return col.values.to_numpy(zero_copy_only=False)[col.offset * dim :][: len(col) * dim].reshape(-1, dim)

    def rows(self, piece: Piece, items: np.ndarray) -> int:
        return int(piece.work.row_counts()[items].sum())

    def empty(self, n: int, like: np.ndarray | None) -> np.ndarray:
        """Room for ``n`` answers shaped like the answer ``like`` (zeros: null in the file until filled)."""
        dim = like.shape[1] if like is not None else self.dimensions or 1
        return np.zeros((n, dim), dtype=np.float32)


class RerankItems(Items):
    """(query, document) pairs; a line is one query's documents of one online request."""

    column = "score"
    rerank = True

    def of(self, request: Request):
        work = request.piece.work
        items = request.items
        keys = self.codec.keys(request).to_pylist()
        query = work.queries[int(work.pair_group[items[0]])] if len(items) else None
        per = max(1, request.tokens // max(1, len(items)))
        return keys, [work.documents[i] for i in items.tolist()], query, np.full(len(items), per, np.int64)

    def lines(self, tokens: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return np.asarray(groups, dtype=np.int32)  # one online request = one line

    def body(self, texts: list[str], query: str | None) -> dict[str, Any]:
        return {"query": query, "documents": texts}

    def parse(self, body: Any, n: int) -> tuple[np.ndarray, int | None]:
        scores, tokens = parse_scores(orjson.dumps(body), n)
        return scores, tokens if tokens is not None else _reported_tokens(body)

    def answer_array(self, answers: np.ndarray, valid: np.ndarray) -> pa.Array:
        return pa.array(np.asarray(answers, np.float32), pa.float32(), mask=~valid)

    def answers_of(self, table: pa.Table) -> np.ndarray:
        return table.column(self.column).to_numpy(zero_copy_only=False).astype(np.float32)

    def empty(self, n: int, like: np.ndarray | None) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)


def items_for(
    task: Any, rerank: bool, batch_inputs: int, batch_tokens: int, dimensions: int | None, cut: int | None = None
) -> Items:
    """The items adapter of ``task`` (a rerank or an embed task)."""
    if rerank:
        return RerankItems(task, batch_inputs, batch_tokens)
    return EmbedItems(task, batch_inputs, batch_tokens, dimensions, cut)


def check_parsed(answers: np.ndarray, n: int) -> None:
    """An answer holds exactly ``n`` results (the parsers check this; kept as a guard for new shapes)."""
    if len(answers) != n:
        raise MalformedResponse(f"asked for {n} answers, got {len(answers)}")


def job_items(resolved: Any, task: Any, shape: OpenAIShape) -> Items:
    """The task's items adapter, lines sized like the online requests (under the provider's cap)."""
    job = resolved.config
    return items_for(
        task,
        job.is_rerank,
        resolved.model.batch_inputs,
        job.limits.batch_tokens,
        resolved.send_dimensions,
        resolved.cut_dimensions,
    )
