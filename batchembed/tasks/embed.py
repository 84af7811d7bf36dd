"""The embedding task: rows -> texts -> unique texts -> vectors -> ``fixed_size_list<float32>`` column.

Identical texts are embedded once: within a chunk by dictionary encoding, across chunks and runs
through the dedup layer in front of the embedder (``tasks/dedup.py``: the ``VectorMemo`` and the
texts in flight), and every row that shares a text gets the same vector. How its answers go into
the answer journal is ``tasks/embed_codec.py``; a chunk's state is ``tasks/embed_work.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed import __version__
from batchembed.errors import InputError, MalformedResponse, ServerIgnoredSettings
from batchembed.input.units import Chunk, Unit
from batchembed.job.resolved import ResolvedJob, limit_text
from batchembed.job.templates import text_fields
from batchembed.output.cache import KEY_COLUMN, OutputCache, key_column
from batchembed.output.schema import conform
from batchembed.output.shard_writer import vector_array
from batchembed.providers.base import Embedder, EmbeddingResult
from batchembed.stats import Stats
from batchembed.tasks import Piece, PieceTables, Request, failure_table
from batchembed.tasks.batching import pack
from batchembed.tasks.dedup import SharedEmbedder
from batchembed.tasks.embed_codec import EmbedJournalCodec
from batchembed.tasks.embed_work import EmbedWork
from batchembed.tasks.ids import chunk_positions, id_column_name, row_ids
from batchembed.tasks.memo import VectorMemo, text_keys
from batchembed.tasks.texts import add_prefix, blank_mask, build_texts
from batchembed.tasks.tokens import TokenCounter, exact_counts, over_limit
from batchembed.tasks.vectors import Vectors

#: How often one text is cut again after the server answered "input too long" before it fails.
MAX_SERVER_CUTS = 3


class EmbedTask:
    """Embeds ``input.text`` of every row with ``embedder``."""

    group_key = None

    def __init__(
        self,
        resolved: ResolvedJob,
        embedder: Embedder | None,
        counter: TokenCounter,
        *,
        stats: Stats,
        memo: VectorMemo,
    ) -> None:
        """``embedder`` may be ``None`` when only ``prepare`` is called (``batchembed plan``)."""
        job = resolved.config
        self.job = job
        self.model = resolved.model
        self.embedder = embedder
        self.counter = counter
        self.prefix = resolved.prefix
        self.input_tokens = resolved.input_tokens
        self.cut_reason = resolved.cut_reason  # limits.input_tokens, or the model's own smaller limit
        self.stats = stats
        self.shared = SharedEmbedder(embedder, memo, stats, self._check_answer)
        self.vectors = Vectors(job.model.dimensions, job.model.normalize)  # width, check, written lengths
        self.id_column = id_column_name(job)
        #: Vectors the output already holds (``output.cache.OutputCache``), given by ``reuse_output``.
        self.output_cache: OutputCache | None = None
        #: The type every shard holds each copied column as (``output.schema``), settled by the run before buying.
        self.output_types: dict[str, pa.DataType] = {}
        cols = list(text_fields(job.input.text))
        for c in ([job.input.id] if job.input.id else []) + list(job.input.keep):
            if c not in cols:
                cols.append(c)
        self.columns = cols
        self.codec = EmbedJournalCodec(self)  # the task's one journal codec (the run's journal binds it)

    # ------------------------------------------------------------------------------- preparing

    def prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """Texts, blank rows, dedup, memo hits, token counts, too-long policy and request packing."""
        job = self.job
        table = chunk.table
        n = table.num_rows
        positions = chunk_positions(chunk)
        texts = build_texts(table, job.input.text)
        blank = blank_mask(texts)
        if blank.any() and job.input.on_empty == "fail":
            at = int(np.flatnonzero(blank)[0])
            raise InputError(
                f"{chunk.source_at(at).path}: row {int(positions[at])}: text is empty or null (input.on_empty = 'fail')"
            )
        texts = add_prefix(texts, self.prefix)
        sendable = np.flatnonzero(~blank)
        encoded = pc.dictionary_encode(texts.take(pa.array(sendable, pa.int64())))
        unique = encoded.dictionary
        row_to_text = np.full(n, -1, dtype=np.int64)
        row_to_text[sendable] = encoded.indices.to_numpy(zero_copy_only=False)
        counts = self.counter.count(unique) if len(unique) else np.zeros(0, np.int64)
        unique_texts = unique.to_pylist()
        skipped = int(blank.sum())
        too_long, counts = over_limit(self.counter, unique, counts, self.input_tokens)
        truncated: dict[int, tuple[str, int, int, int]] = {}
        if len(too_long):
            policy = job.limits.on_too_long
            if policy == "fail":
                at = int(np.flatnonzero(row_to_text == too_long[0])[0])
                raise InputError(
                    f"{chunk.source_at(at).path}: row {int(positions[at])}: text has about {counts[too_long[0]]} "
                    f"tokens, over {limit_text(self.cut_reason, self.input_tokens)} (limits.on_too_long = 'fail')"
                )
            if policy == "truncate":
                for i in too_long:
                    whole = unique_texts[i]
                    unique_texts[i] = self.counter.truncate(whole, self.input_tokens)
                    truncated[int(i)] = (self.cut_reason, int(counts[i]), len(whole), len(unique_texts[i]))
                cut = self.counter.count(pa.array([unique_texts[i] for i in too_long], pa.string()))
                counts[too_long] = np.minimum(cut, self.input_tokens)
            else:  # skip: keep the rows with a null vector, never send them
                dropped = np.isin(row_to_text, too_long)
                skipped += int(dropped.sum())
                row_to_text[dropped] = -1
        keys = text_keys(unique_texts)
        used = np.unique(row_to_text[row_to_text >= 0])
        work = EmbedWork(
            table=self._output_columns(table, chunk, positions),
            positions=positions,
            row_to_text=row_to_text,
            texts=unique_texts,
            tokens=counts,
            keys=keys,
            truncated=truncated,
        )
        hits = self.shared.lookup(keys[used])
        if self.output_cache is not None:
            self._reuse(keys, used, row_to_text, hits, counts, chunk.unit)
        if hits:
            found = [i for i in used if keys[i] in hits]
            work.set_vectors(found, np.stack([hits[keys[i]] for i in found]))
            self.note_server_cuts(work, found)
            to_send = np.array([i for i in used if keys[i] not in hits], dtype=np.int64)
        else:
            to_send = used.astype(np.int64, copy=False)
        rows_tokens = int(counts[row_to_text[row_to_text >= 0]].sum())
        self.stats.tokens_saved += rows_tokens - int(counts[to_send].sum())
        piece = Piece(chunk=chunk, rows=n, skipped=skipped, work=work)
        return piece, self.pack(piece, to_send)

    @staticmethod
    def _count(unit: Unit, work: EmbedWork, texts: np.ndarray) -> None:
        """Count the unit's distinct texts with a vector (``ShardRecord.counted``), each once."""
        seen = unit.counted_keys
        new = [int(i) for i in np.unique(texts) if work.keys[i] not in seen]
        seen.update(work.keys[i] for i in new)
        unit.counted += int(work.tokens[new].sum())

    def _reuse(
        self, keys: np.ndarray, used: np.ndarray, row_to_text: np.ndarray, hits: dict, counts: np.ndarray, unit: Unit
    ) -> None:
        """Add to ``hits`` the vectors the output already holds (a refresh buys only new texts); the unit
        carries the tokens that bought them (each text once), so what its rows cost is still known."""
        missing = [keys[i] for i in used if keys[i] not in hits]
        found = self.output_cache.lookup(missing) if missing else {}
        if not found:
            return
        hits.update(found)
        reused = np.fromiter((i for i in used if keys[i] in found), np.int64)
        self.stats.rows_reused += int(np.isin(row_to_text, reused).sum())
        self.stats.texts_reused += len(reused)
        carried = [int(i) for i in reused if keys[i] not in unit.reused_keys]
        unit.reused_keys.update(keys[i] for i in carried)
        unit.reused_tokens += round(int(counts[carried].sum()) * self.output_cache.ratio)

    def pack(self, piece: Piece, items: np.ndarray) -> list[Request]:
        """Requests for ``items`` of ``piece``, in order, under ``batch_inputs`` and ``batch_tokens``."""
        tokens = piece.work.tokens[items]
        batches = pack(tokens, self.model.batch_inputs, self.job.limits.batch_tokens)
        return [Request(piece, items[a:b], int(tokens[a:b].sum())) for a, b in batches]

    def _output_columns(self, table: pa.Table, chunk: Chunk, positions: np.ndarray) -> pa.Table:
        cols = {self.id_column: row_ids(table, self.job, chunk, positions)}
        for name in self.job.input.keep:
            if name not in cols:
                cols[name] = table.column(name)
        return conform(pa.table(cols), self.output_types)

    # --------------------------------------------------------------------------------- sending

    async def call(self, request: Request, meter: Any) -> EmbeddingResult:
        """Embed the request's texts through the dedup layer (only texts nobody else has are sent).

        When the request sends all its texts itself, its checked answer is journaled on the thread that
        decoded it (``EmbedJournalCodec.keep``), before the event loop sees it."""
        work: EmbedWork = request.piece.work
        items = request.items
        all_texts = work.texts
        texts = [all_texts[i] for i in items.tolist()]

        def keep(answer: EmbeddingResult) -> None:
            self.codec.keep(request, answer.vectors, answer.prompt_tokens or meter.tokens)

        return await self.shared.embed(work.keys[items], texts, work.tokens[items], request.tokens, meter, keep)

    def _check_answer(self, answer: EmbeddingResult, n: int) -> None:
        """An answer for ``n`` texts has ``n`` vectors of the job's size (learned from the first answer),
        none all-zero or non-finite; they are normalised as ``model.normalize`` says (``VectorCheck``)."""
        vectors = answer.vectors
        if vectors.shape[0] != n:
            raise MalformedResponse(f"asked for {n} vectors, got {vectors.shape[0]}")
        dim = vectors.shape[1]
        if not self.vectors.learn(dim):  # every vector of the answer: the server ignores dimensions, or another model
            raise ServerIgnoredSettings(
                f"the server answered {dim}-dimensional vectors for every input, where this job's vectors have "
                f"{self.vectors.dim}: it ignores model.dimensions or serves another model. "
                f'Set model.dimensions = {dim} and run with --restart, or model.dimensions_by = "client" to cut '
                "vectors here"
            )
        answer.vectors, answer.norms = self.vectors.check.check(vectors, answer.norms)

    def accept(self, request: Request, answer: EmbeddingResult) -> int | None:
        """Store the request's vectors in its piece (checked on arrival by the dedup layer): only where
        the journal wrote them, when it did."""
        request.piece.work.set_vectors(request.items, answer.vectors, answer.norms, kept=request.kept)
        self.note_server_cuts(request.piece.work, request.items)
        return answer.prompt_tokens

    def note_server_cuts(self, work: EmbedWork, items) -> None:
        """Texts among ``items`` whose answer is that of a text cut after the server's "too long" (cut by
        another piece of this run, or by the killed run whose journal answered) are cut rows here too."""
        cuts = self.shared.cuts
        if cuts:
            for i in items:
                cut = cuts.get(work.keys[int(i)])
                if cut is not None:
                    work.truncated[int(i)] = cut

    def reuse_output(self, store: Any, shards: list) -> None:
        """Take vectors the output already holds (``shards``: a refresh's kept and retiring ones) instead of
        buying their texts again."""
        self.output_cache = OutputCache(store, shards, self.job.output.column)

    def journal_codec(self) -> EmbedJournalCodec:
        """Texts' answers in the journal: keyed by text (a text's answer is found wherever it recurs)."""
        return self.codec

    def shorten(self, request: Request) -> bool:
        """The server said this one text is too long although it fits our count: cut it by a quarter.

        The server's answer is the last word on length. Returns False when nothing more can be cut
        (the request is then dead-lettered)."""
        work: EmbedWork = request.piece.work
        i = int(request.items[0])
        if work.server_cuts.get(i, 0) >= MAX_SERVER_CUTS:
            return False
        work.server_cuts[i] = work.server_cuts.get(i, 0) + 1
        text = work.texts[i]
        tokens = int(exact_counts(self.counter, pa.array([text], pa.string()))[0])
        limit = int(min(tokens, self.input_tokens) * 0.75)
        cut = self.counter.truncate(text, limit) if limit >= 1 else ""
        if not cut or cut == text:
            return False
        before = work.truncated.get(i, ("", tokens, len(text), len(text)))
        work.truncated[i] = ("server: input too long", before[1], before[2], len(cut))
        self.shared.cuts[work.keys[i]] = work.truncated[i]  # its answer, wherever it is used, is a cut text's
        work.texts[i] = cut
        request.tokens = int(self.counter.count(pa.array([cut], pa.string()))[0])
        work.tokens[i] = request.tokens
        return True

    def truncated_rows(self, piece: Piece) -> pa.Table | None:
        """Rows of a finished piece whose text was cut: id, file, row, reason, tokens and chars before/after."""
        work: EmbedWork = piece.work
        cut = {i: v for i, v in work.truncated.items() if i not in piece.errors}
        if not cut:
            return None
        idx = np.flatnonzero(np.isin(work.row_to_text, np.fromiter(cut, np.int64)))
        texts = work.row_to_text[idx]
        return pa.table(
            {
                "id": pc.cast(work.table.column(self.id_column).take(pa.array(idx)), pa.string()),
                "file": piece.chunk.file_names().take(pa.array(idx)),
                "row": pa.array(work.positions[idx], pa.int64()),
                "reason": pa.array([cut[int(t)][0] for t in texts], pa.string()),
                "tokens_before": pa.array([cut[int(t)][1] for t in texts], pa.int64()),
                "chars_before": pa.array([cut[int(t)][2] for t in texts], pa.int64()),
                "chars_after": pa.array([cut[int(t)][3] for t in texts], pa.int64()),
            }
        )

    # --------------------------------------------------------------------------------- output

    def tables(self, piece: Piece) -> PieceTables:
        """Shard rows (failed rows left out, vector column appended), the failed rows and the cut rows."""
        work: EmbedWork = piece.work
        n = piece.rows
        rows = work.row_to_text
        valid = rows >= 0
        failed_mask = np.zeros(n, dtype=bool)
        if piece.errors:
            failed_mask = np.isin(rows, np.fromiter(piece.errors, np.int64))
            valid &= ~failed_mask
        if valid.any():  # the answers as they lie (read back from the journal in place), or gathered
            vectors, norms = work.vectors.column(rows, valid, self.vectors.dim)
            self.vectors.norms.add(piece.chunk.unit.name, norms)
            self._count(piece.chunk.unit, work, rows[valid])
        else:
            vectors = vector_array(np.zeros((n, self.vectors.dim), dtype=np.float32), valid)
        column = self.job.output.column
        table = work.table.append_column(
            pa.field(column, pa.list_(pa.float32(), self.vectors.dim)), vectors
        ).append_column(pa.field(KEY_COLUMN, pa.binary(16)), key_column(work.keys, rows, valid))
        failed = None
        if failed_mask.any():
            idx = np.flatnonzero(failed_mask)
            failed = failure_table(
                pc.cast(work.table.column(self.id_column).take(pa.array(idx)), pa.string()),
                piece.chunk.file_names().take(pa.array(idx)),
                work.positions[idx],
                [piece.errors[int(rows[i])] for i in idx],
            )
            table = table.filter(pa.array(~failed_mask))
        return PieceTables(table, failed, self.truncated_rows(piece))

    def close(self) -> None:
        """Close the vector cache."""
        self.shared.close()

    def metadata(self) -> dict[str, Any]:
        """Recorded in every shard's Parquet metadata."""
        return {
            "version": __version__,
            "task": "embed",
            "provider": self.model.provider,
            "model": self.model.name,
            "dimensions": self.vectors.dim,
            "column": self.job.output.column,
            "text": self.job.input.text,
            "normalize": self.job.model.normalize,
            "model_unit_norm": self.vectors.check.unit_norm,  # the model's full vectors are unit length
            "normalizes_here": self.vectors.check.active,  # vectors not unit length are L2-normalised here
        }

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change the vectors or the output's shape."""
        j = self.job
        return {
            "input.text": j.input.text,
            "input.id": j.input.id,
            "input.keep": list(j.input.keep),
            "input.on_empty": j.input.on_empty,
            "input.prefix": self.prefix,
            "limits.input_tokens": self.input_tokens,
            "limits.on_too_long": j.limits.on_too_long,
            "limits.tokenizer": self.counter.name,
            "output.column": j.output.column,
        }
