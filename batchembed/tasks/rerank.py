"""The rerank task: (query, document) pairs -> relevance scores -> long-format rows with ranks.

Input layouts: **pairs** (one row per pair; consecutive rows with the same query form one group)
and **lists** (one row per query with a list<string> column of documents). A group's documents
are packed into requests under ``batch_inputs`` and ``batch_tokens`` (the query's tokens counted
once per document, as the server sees them); split groups are merged before ``top_n`` and ranks
are applied, so the result equals one big request. A group whose scoring fails is failed whole,
so a retry redoes the whole query and its ranks stay exact.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed import __version__
from batchembed.errors import ConfigError, InputError, MalformedResponse
from batchembed.input.units import Chunk, key_changes
from batchembed.job.config import RerankConfig
from batchembed.job.resolved import ResolvedJob
from batchembed.output.cache import PAIR_KEY_COLUMN, OutputCache
from batchembed.output.journal.writer import Resumed
from batchembed.providers.rerank import RerankResult
from batchembed.stats import Stats
from batchembed.tasks import Piece, PieceTables, Request, failure_table
from batchembed.tasks.batching import pack
from batchembed.tasks.ids import chunk_positions, generated_ids
from batchembed.tasks.memo import key_array, pair_keys
from batchembed.tasks.texts import as_string, blank_mask
from batchembed.tasks.tokens import TokenCounter, over_limit


@dataclass
class RerankWork:
    """Per-chunk state: pairs, the group (query) each belongs to, and scores as they arrive."""

    queries: list[str]  # per group
    query_ids: pa.Array  # per group
    group_rows: list[np.ndarray]  # per group: the chunk rows it came from
    pair_group: np.ndarray  # per pair
    pair_row: np.ndarray  # per pair: chunk row it came from
    documents: list[str]  # per pair
    doc_ids: pa.Array  # per pair
    sendable: np.ndarray  # per pair: False for blank documents/queries (kept, score null)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    keep: pa.Table | None = None  # keep columns per chunk row
    positions: np.ndarray | None = None  # file row per chunk row
    keys: pa.Array | None = None  # per pair: journal key (file, file row, pair within the row)
    pair_keys: np.ndarray | None = None  # per pair: the key of the (query, document) text scored (``_pair_key``)
    cut: dict[int, tuple[int, int]] = field(default_factory=dict)  # pair -> document tokens, chars before the cut


class RerankTask:
    """Scores every (query, document) pair of the input with ``reranker``."""

    def __init__(self, resolved: ResolvedJob, reranker: Any, counter: TokenCounter, *, stats: Stats) -> None:
        """``reranker`` may be ``None`` when only ``prepare`` is called (``batchembed plan``)."""
        job = resolved.config
        self.job = job
        self.cfg: RerankConfig = job.rerank or RerankConfig()
        self.model = resolved.model
        self.reranker = reranker
        self.counter = counter
        self.input_tokens = resolved.input_tokens
        self.cut_reason = resolved.cut_reason  # limits.input_tokens, or the model's own smaller limit
        self.stats = stats
        cfg = self.cfg
        names = [cfg.query, cfg.query_id, cfg.document, cfg.doc_id, *job.input.keep]
        self.columns = list(dict.fromkeys(n for n in names if n))
        self.group_key = (cfg.query_id or cfg.query) if cfg.layout == "pairs" else None
        self.vectors = None  # scores, not vectors
        self.output_types: dict[str, Any] = {}  # (a rerank output's columns are not settled yet)
        #: Scores the output already holds (``output.cache.OutputCache``), given by ``reuse_output``.
        self.output_cache: OutputCache | None = None
        #: Whether shards get the pair key column (an output written before it goes on without it).
        self.write_keys = True
        for clash in ("query_id", "doc_id", "score", "rank", "document"):
            if clash in job.input.keep and clash not in (cfg.query_id, cfg.doc_id):
                raise ConfigError(f"input.keep: {clash!r} clashes with an output column of rerank jobs")

    # ------------------------------------------------------------------------------- preparing

    def prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """Pairs, groups, token counts, too-long policy, and one or more requests per group."""
        work = self._pairs(chunk)
        q_tokens = self.counter.count(pa.array(work.queries, pa.string())) if work.queries else np.zeros(0, np.int64)
        d_tokens = self.counter.count(pa.array(work.documents, pa.string()))
        budget = self.input_tokens - q_tokens[work.pair_group] if len(work.documents) else np.zeros(0, np.int64)
        over, d_tokens = over_limit(self.counter, pa.array(work.documents, pa.string()), d_tokens, budget)
        over = over[work.sendable[over]]
        if len(over):
            policy = self.job.limits.on_too_long
            if policy == "fail":
                row = int(work.positions[work.pair_row[over[0]]])
                raise InputError(
                    f"{chunk.source.path}: row {row}: query + document exceed limits.input_tokens = "
                    f"{self.input_tokens} (limits.on_too_long = 'fail')"
                )
            if policy == "truncate":
                for i in over:
                    whole = work.documents[i]
                    work.documents[i] = self.counter.truncate(whole, max(int(budget[i]), 1))
                    work.cut[int(i)] = (int(d_tokens[i]), len(whole))
                cut = self.counter.count(pa.array([work.documents[i] for i in over], pa.string()))
                d_tokens[over] = np.minimum(cut, np.maximum(budget[over], 1))
            else:
                work.sendable[over] = False
        work.scores = np.full(len(work.documents), np.nan, dtype=np.float32)
        pair_tokens = d_tokens + (q_tokens[work.pair_group] if len(work.documents) else 0)
        skipped_rows = chunk.table.num_rows - len(np.unique(work.pair_row[work.sendable]))
        piece = Piece(chunk=chunk, rows=chunk.table.num_rows, skipped=skipped_rows, work=work)
        work.pair_keys = pair_keys([work.queries[g] for g in work.pair_group], work.documents)
        to_score = work.sendable & ~self._reuse(work, pair_tokens)
        requests = []
        for g in range(len(work.queries)):
            items = np.flatnonzero((work.pair_group == g) & to_score)
            for a, b in pack(pair_tokens[items], self.model.batch_inputs, self.job.limits.batch_tokens):
                requests.append(Request(piece, items[a:b], int(pair_tokens[items[a:b]].sum())))
        return piece, requests

    def _reuse(self, work: RerankWork, pair_tokens: np.ndarray) -> np.ndarray:
        """Scores the output already holds for this chunk's pairs go into ``work.scores`` (a refresh scores
        only new pairs); the pairs found."""
        found = np.zeros(len(work.documents), bool)
        if self.output_cache is None or not work.sendable.any():
            return found
        asked = np.flatnonzero(work.sendable)
        held = self.output_cache.lookup([work.pair_keys[i] for i in asked])
        if not held:
            return found
        for i in asked:
            score = held.get(work.pair_keys[i])
            if score is not None:
                work.scores[i] = score
                found[i] = True
        self.stats.tokens_saved += int(pair_tokens[found].sum())
        scored_rows = np.unique(work.pair_row[work.sendable & ~found])
        self.stats.rows_reused += len(np.setdiff1d(np.unique(work.pair_row[found]), scored_rows))
        return found

    def _pairs(self, chunk: Chunk) -> RerankWork:
        cfg = self.cfg
        table = chunk.table
        positions = chunk_positions(chunk)
        n = table.num_rows
        queries_col = as_string(table.column(cfg.query))
        blank_query = blank_mask(queries_col)
        keep = table.select(list(self.job.input.keep)) if self.job.input.keep else None
        if cfg.layout == "pairs":
            starts = [0, *key_changes(table.column(self.group_key)).tolist()] if n else []
            bounds = list(zip(starts, [*starts[1:], n], strict=True))
            pair_group = np.repeat(np.arange(len(bounds)), [b - a for a, b in bounds])
            pair_row = np.arange(n)
            documents = as_string(table.column(cfg.document))
            doc_ids = (
                table.column(cfg.doc_id).combine_chunks() if cfg.doc_id else generated_ids(chunk.source.name, positions)
            )
            group_first = np.array([a for a, _ in bounds], dtype=np.int64)
            group_rows = [np.arange(a, b) for a, b in bounds]
        else:
            lists = table.column(cfg.document).combine_chunks()
            if not pa.types.is_list(lists.type) and not pa.types.is_large_list(lists.type):
                raise InputError(
                    f"{chunk.source.path}: rerank.document column {cfg.document!r} must be a list of strings"
                )
            lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
            pair_row = np.repeat(np.arange(n), lengths)
            pair_group = pair_row
            documents = as_string(pc.list_flatten(lists))
            if cfg.doc_id:
                doc_ids = pc.list_flatten(table.column(cfg.doc_id).combine_chunks())
                if len(doc_ids) != len(documents):
                    raise InputError(f"{chunk.source.path}: rerank.doc_id lists differ in length from the documents")
            else:
                doc_ids = pa.array(np.concatenate([np.arange(k) for k in lengths]) if n else [], pa.int64())
            group_first = np.arange(n)
            group_rows = [np.array([i]) for i in range(n)]
        queries = queries_col.take(pa.array(group_first, pa.int64())).to_pylist() if len(group_first) else []
        query_ids = (
            table.column(cfg.query_id).combine_chunks().take(pa.array(group_first, pa.int64()))
            if cfg.query_id
            else pa.array(queries, pa.string())
        )
        sendable = ~blank_mask(documents) & ~blank_query[pair_row] if len(documents) else np.zeros(0, bool)
        return RerankWork(
            queries=[q or "" for q in queries],
            query_ids=query_ids,
            group_rows=group_rows,
            pair_group=pair_group,
            pair_row=pair_row,
            documents=[d or "" for d in documents.to_pylist()],
            doc_ids=doc_ids,
            sendable=sendable,
            keep=keep,
            positions=positions,
        )

    # --------------------------------------------------------------------------------- sending

    async def call(self, request: Request, meter: Any) -> RerankResult:
        """Score the request's documents against their (single) query."""
        work: RerankWork = request.piece.work
        query = work.queries[int(work.pair_group[request.items[0]])]
        async with meter(request.tokens):
            return await self.reranker.rerank(query, [work.documents[i] for i in request.items], self.cfg.task)

    def accept(self, request: Request, answer: RerankResult) -> int | None:
        """Store scores (checking the count)."""
        if len(answer.scores) != len(request.items):
            raise MalformedResponse(f"asked for {len(request.items)} scores, got {len(answer.scores)}")
        request.piece.work.scores[request.items] = answer.scores
        return answer.prompt_tokens

    def shorten(self, request: Request) -> bool:
        """A pair the server finds too long is not cut again here (its document was cut to fit already)."""
        return False

    def reuse_output(self, store: Any, shards: list) -> None:
        """Take scores the output already holds (``shards``: a refresh's kept and retiring ones) by their pair
        key (``_pair_key``: query and document text) instead of scoring those pairs again. An output written
        before the key existed goes on without it (its Delta table keeps one schema): its pairs are scored again."""
        self.write_keys = not shards or PAIR_KEY_COLUMN in store.parquet_file(shards[0].name).schema_arrow.names
        if shards and self.write_keys:
            self.output_cache = OutputCache(store, shards, "score", PAIR_KEY_COLUMN)

    def journal_codec(self) -> RerankJournalCodec:
        """Pairs' scores in the journal, keyed by where each pair is in the input."""
        return RerankJournalCodec()

    def _failed_groups(self, piece: Piece) -> np.ndarray:
        work: RerankWork = piece.work
        if not piece.errors:
            return np.zeros(0, np.int64)
        return np.unique(work.pair_group[np.fromiter(piece.errors, np.int64)])

    def close(self) -> None:
        """Nothing to release."""

    # --------------------------------------------------------------------------------- output

    def tables(self, piece: Piece) -> PieceTables:
        """Long-format rows ranked within each query (top_n applied), the failed groups' rows, and the
        pairs whose document was cut to fit ``limits.input_tokens`` (a pair the server finds too long
        fails like any other row: rerank has no ``shorten``)."""
        work: RerankWork = piece.work
        failed_groups = self._failed_groups(piece)
        ok = ~np.isin(work.pair_group, failed_groups)
        scores = work.scores
        # order: group, then score descending; pairs without a score last, unranked
        missing = np.isnan(scores)
        order = np.lexsort((np.arange(len(scores)), np.where(missing, np.inf, -scores), work.pair_group))
        order = order[ok[order]]
        groups = work.pair_group[order]
        first = np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)
        starts = np.maximum.accumulate(np.where(first, np.arange(len(groups)), 0)) if len(groups) else groups
        rank = (np.arange(len(groups)) - starts + 1).astype(np.int32)
        ranked = ~missing[order]
        keep_mask = np.ones(len(order), bool)
        if self.cfg.top_n is not None:
            keep_mask = ranked & (rank <= self.cfg.top_n)
        order, rank, ranked = order[keep_mask], rank[keep_mask], ranked[keep_mask]
        idx = pa.array(order, pa.int64())
        cols: dict[str, Any] = {
            "query_id": work.query_ids.take(pa.array(work.pair_group[order], pa.int64())),
            "doc_id": work.doc_ids.take(idx),
            "score": pa.array(scores[order], pa.float32(), mask=~ranked),
            "rank": pa.array(rank, pa.int32(), mask=~ranked),
        }
        if self.cfg.return_documents:
            cols["document"] = pa.array([work.documents[i] for i in order], pa.string())
        if work.keep is not None:
            rows = pa.array(work.pair_row[order], pa.int64())
            for name in work.keep.column_names:
                if name not in cols:
                    cols[name] = work.keep.column(name).take(rows)
        if self.write_keys:  # the key of each scored pair: a refresh finds its score here
            keys = key_array(work.pair_keys[order]) if len(order) else pa.array([], pa.binary(16))
            cols[PAIR_KEY_COLUMN] = pc.if_else(pa.array(ranked), keys, pa.scalar(None, pa.binary(16)))
        table = pa.table(cols)
        failed = None
        if len(failed_groups):
            rows = np.concatenate([work.group_rows[g] for g in failed_groups])
            first_error = {int(work.pair_group[i]): msg for i, msg in piece.errors.items()}
            errors = []
            group_of_row = {}
            for g in failed_groups:
                for r in work.group_rows[g]:
                    group_of_row[int(r)] = int(g)
            for r in rows:
                errors.append(first_error.get(group_of_row[int(r)], "another document of this query failed"))
            ids = pc.cast(work.query_ids.take(pa.array([group_of_row[int(r)] for r in rows], pa.int64())), pa.string())
            failed = failure_table(ids, piece.chunk.source.name, work.positions[rows], errors)
        return PieceTables(table, failed, self._cut_rows(piece, failed_groups))

    def _cut_rows(self, piece: Piece, failed_groups: np.ndarray) -> pa.Table | None:
        """The pairs of a finished piece whose document was cut (failed queries left out), as
        ``_truncated/`` lists them: the query's id, the document's id, file, row, reason, the document's
        tokens and characters before the cut, characters kept."""
        work: RerankWork = piece.work
        pairs = np.array(sorted(work.cut), dtype=np.int64)
        pairs = pairs[~np.isin(work.pair_group[pairs], failed_groups)] if len(pairs) else pairs
        if not len(pairs):
            return None
        at = pa.array(pairs, pa.int64())
        return pa.table(
            {
                "id": pc.cast(work.query_ids.take(pa.array(work.pair_group[pairs], pa.int64())), pa.string()),
                "doc_id": pc.cast(work.doc_ids.take(at), pa.string()),
                "file": pa.array([piece.chunk.source.name] * len(pairs), pa.string()),
                "row": pa.array(work.positions[work.pair_row[pairs]], pa.int64()),
                "reason": pa.array([self.cut_reason] * len(pairs), pa.string()),
                "tokens_before": pa.array([work.cut[int(i)][0] for i in pairs], pa.int64()),
                "chars_before": pa.array([work.cut[int(i)][1] for i in pairs], pa.int64()),
                "chars_after": pa.array([len(work.documents[int(i)]) for i in pairs], pa.int64()),
            }
        )

    def metadata(self) -> dict[str, Any]:
        """Recorded in every shard's Parquet metadata."""
        return {
            "version": __version__,
            "task": "rerank",
            "provider": self.model.provider,
            "model": self.model.name,
            "top_n": self.cfg.top_n,
            "layout": self.cfg.layout,
        }

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change the scores or the output's shape."""
        return {
            **{f"rerank.{k}": v for k, v in vars(self.cfg).items()},
            "input.keep": list(self.job.input.keep),
            "limits.input_tokens": self.input_tokens,
            "limits.on_too_long": self.job.limits.on_too_long,
            "limits.tokenizer": self.counter.name,
        }


class RerankJournalCodec:
    """Scores in the answer journal: a pair is keyed by its place in the input (file, row, position in
    the row), since pairs are never shared between pieces."""

    @staticmethod
    def _keys(piece: Piece) -> pa.Array:
        """16 bytes per pair: file row (int64), its index within the row (int32), crc32 of the file name."""
        work: RerankWork = piece.work
        if work.keys is None:
            n = len(work.pair_row)
            per_row = np.bincount(work.pair_row, minlength=len(work.positions)) if n else np.zeros(0, np.int64)
            first_pair = np.cumsum(per_row) - per_row
            raw = np.zeros(n, dtype=[("row", "<i8"), ("pair", "<i4"), ("file", "<u4")])
            raw["row"] = work.positions[work.pair_row] if n else 0
            raw["pair"] = np.arange(n) - first_pair[work.pair_row] if n else 0
            raw["file"] = zlib.crc32(piece.chunk.source.name.encode())
            work.keys = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw.tobytes())])
        return work.keys

    def keys(self, request: Request) -> pa.Array:
        """The place of each pair of ``request``."""
        return self._keys(request.piece).take(pa.array(request.items, pa.int64()))

    def bind(self, journal: Any) -> None: ...  # scores are journaled as accepted (``answers``): none kept

    def answers(self, request: Request) -> list[tuple[str, pa.RecordBatch, int]]:
        """Keys and scores of the request's pairs, for its unit; each pair counts as one row."""
        piece, items = request.piece, request.items
        keys = self._keys(piece).take(pa.array(items, pa.int64()))
        scores = pa.array(piece.work.scores[items], pa.float32())
        return [(piece.chunk.unit.name, pa.record_batch({"key": keys, "score": scores}), len(items))]

    def resume(self, piece: Piece, requests: list[Request], recovered: Any) -> Resumed:
        """Scores the journal holds go into the piece; requests keep only pairs without one. A prepared
        piece holds no score yet (pairs are never shared), so nothing is journaled here."""
        if recovered is None:
            return Resumed(requests, 0, 0, None)
        work: RerankWork = piece.work
        keys = self._keys(piece).to_pylist()
        asked = np.concatenate([r.items for r in requests]) if requests else np.zeros(0, np.int64)
        at = recovered.find([keys[i] for i in asked])
        hit = at >= 0
        work.scores[asked[hit]] = recovered.take("score", at[hit])  # only this piece's scores are read
        have = np.zeros(len(keys), dtype=bool)
        have[asked[hit]] = True
        found_pairs = int(hit.sum())
        left, resent = [], 0
        for request in requests:
            items = request.items
            rest = items[~have[items]]
            resent += sum(1 for i in rest if keys[i] in recovered.sent)
            if len(rest) == len(items):
                left.append(request)
            elif len(rest):
                left.append(Request(piece, rest, max(1, request.tokens * len(rest) // len(items))))
        return Resumed(left, found_pairs, resent, None)
