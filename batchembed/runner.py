"""The asyncio pipeline: reader -> pieces -> request workers -> ordered writer -> manifest.

The only module that creates tasks. Stages hand each other plain values; memory is bounded by a
window of pieces (read but not yet written), so a slow provider pushes back on the reader.

    reader (thread)  ──chunks──►  prepare (texts, tokens, dedup, pack)  ──requests──►  N workers
                                                                                         │
    manifest ◄── commit shard ◄── writer (in unit order, one row group per piece) ◄──────┘
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed import __version__
from batchembed.batching import halves, pack
from batchembed.checkpoint import (
    FAILED,
    FAILED_DIR,
    REPORT,
    SUCCESS,
    Manifest,
    ShardRecord,
    failpoint,
    open_output,
)
from batchembed.config import JobConfig, ResolvedModel, resolve_model, text_fields
from batchembed.errors import (
    APIError,
    AuthError,
    InputError,
    InputTooLong,
    MalformedResponse,
    PayloadTooLarge,
    TerminalAPIError,
    TransientAPIError,
    redact,
)
from batchembed.limits import RateLimits
from batchembed.plan import Chunk, Unit, iter_chunks, pending_rows, retry_chunks
from batchembed.progress import Progress, Stats
from batchembed.providers.base import Embedder
from batchembed.retry import backoff
from batchembed.sources import SourceFile, check_columns, discover
from batchembed.texts import add_prefix, blank_mask, build_texts, query_prefix
from batchembed.tokens import TokenCounter
from batchembed.writer import ShardWriter, fsync_dir, vector_array, write_table_atomically

#: Rows per chunk: the grain of text building, token counting and dedup.
CHUNK_ROWS = 4096
#: Seconds in-flight requests get to finish after SIGINT/SIGTERM before they are abandoned.
STOP_GRACE = 30.0
#: Consecutive requests that exhaust their retries before the job gives up instead of dead-lettering.
GIVE_UP_AFTER = 5

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 3, 130, 143


@dataclass
class Piece:
    """A chunk on its way: unique texts to embed, their vectors as they arrive, and the rows they map to."""

    chunk: Chunk
    table: pa.Table  # id + keep columns
    positions: np.ndarray  # file row number of each row
    row_to_text: np.ndarray  # index into ``texts`` per row, -1 for rows never sent (blank or skipped)
    texts: list[str]
    tokens: np.ndarray  # tokens per unique text
    skipped: int
    vectors: np.ndarray | None = None  # (len(texts), dim) once the first answer arrives
    errors: dict[int, str] = field(default_factory=dict)  # text index -> why it failed
    pending: int = 0
    abandoned: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Request:
    """Some of a piece's unique texts, sent together."""

    piece: Piece
    index: np.ndarray  # indices into piece.texts
    tokens: int


class Stop(Exception):
    """Raised inside the pipeline when a signal asked it to stop."""


class JobRunner:
    """Runs one job to completion (or to a clean stop). Use ``run()``; it returns an exit code."""

    def __init__(
        self,
        job: JobConfig,
        embedder: Embedder,
        counter: TokenCounter,
        *,
        model_identity: dict[str, Any],
        quiet: bool = False,
        restart: bool = False,
        retry_failed: bool = True,
        max_tokens_per_input: int | None = None,
    ) -> None:
        self.job = job
        self.model: ResolvedModel = resolve_model(job)
        self.embedder = embedder
        self.counter = counter
        self.model_identity = model_identity
        self.restart = restart
        self.retry_failed = retry_failed
        self.input_tokens = min(job.limits.input_tokens, max_tokens_per_input or job.limits.input_tokens)
        self.out = Path(job.output.path)
        self.stats = Stats()
        self.progress = Progress(self.stats, quiet=quiet)
        self.limits = RateLimits(self.model.requests_per_minute, self.model.tokens_per_minute, job.limits.concurrency)
        self.prefix = query_prefix(job.input)
        self.dim: int | None = job.model.dimensions
        self.stopping: int | None = None  # the signal number once asked to stop
        self.succeeded_once = False
        self.exhausted_in_a_row = 0
        self.manifest: Manifest | None = None
        self.id_column = job.input.id or ("_row_id" if "id" in job.input.keep else "id")

    # ------------------------------------------------------------------------------ public entry

    def run(self) -> int:
        """Run the job in a fresh event loop; return the process exit code."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.embedder.aclose()

    def _on_signal(self, sig: int) -> None:
        if self.stopping is not None:
            # Second signal: leave now. Committed shards are safe; the next run resumes.
            self.progress.close()
            print("batchembed: stopped at once; run the same command again to resume.", file=sys.stderr)
            os._exit(EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM)
        self.stopping = sig
        self.progress.line(
            f"{signal.Signals(sig).name}: finishing requests in flight (up to {STOP_GRACE:.0f}s), then stopping; "
            "press Ctrl-C again to stop at once"
        )
        asyncio.get_running_loop().call_later(STOP_GRACE, self._abandon_in_flight)

    def _abandon_in_flight(self) -> None:
        for task in list(self._workers):
            task.cancel()

    # ------------------------------------------------------------------------------------ setup

    def fingerprint(self, sources: list[SourceFile]) -> dict[str, Any]:
        """What the vectors depend on; a resume with a different fingerprint is refused."""
        j = self.job
        return {
            "input.text": j.input.text,
            "input.id": j.input.id,
            "input.keep": list(j.input.keep),
            "input.on_empty": j.input.on_empty,
            "input.prefix": self.prefix,
            "model.provider": self.model.provider,
            "model.name": self.model.name,
            "model.dimensions": j.model.dimensions,
            **{f"model.{k}": v for k, v in self.model_identity.items()},
            "limits.input_tokens": self.input_tokens,
            "limits.on_too_long": j.limits.on_too_long,
            "limits.tokenizer": self.counter.name,
            "output.column": j.output.column,
            "output.shard_rows": j.output.shard_rows,
            "files": [s.identity() for s in sources],
        }

    def _columns(self) -> list[str]:
        cols = list(text_fields(self.job.input.text))
        for c in ([self.job.input.id] if self.job.input.id else []) + list(self.job.input.keep):
            if c not in cols:
                cols.append(c)
        return cols

    async def _run(self) -> int:
        sources = await asyncio.to_thread(discover, self.job.input.path)
        columns = self._columns()
        for src in sources:
            await asyncio.to_thread(check_columns, src, columns)
        self.manifest = manifest = await asyncio.to_thread(
            open_output, self.out, self.fingerprint(sources), self.restart
        )
        if manifest.complete and (self.out / SUCCESS).exists():
            self.progress.line(f"{self.out}: job already complete ({manifest.rows():,} rows); nothing to do")
            return EXIT_OK
        self.stats.rows_resumed = manifest.rows()
        retry_units = self._retry_plan(sources, manifest) if self.retry_failed else []
        todo = pending_rows(sources, manifest)
        if todo is not None:
            todo += sum(len(rows) for _, _, rows in retry_units)
        self.stats.rows_total = todo
        if manifest.shards:
            self.progress.line(
                f"resuming {self.out}: {len(manifest.shards)} shards ({manifest.rows():,} rows) already committed"
            )
        self.progress.start()
        try:
            await self._pipeline(sources, columns, retry_units)
        finally:
            self.progress.close()
            await asyncio.to_thread(self._finish_files)
        return self._conclude()

    def _retry_plan(self, sources: list[SourceFile], manifest: Manifest):
        """Failed rows of earlier runs, grouped by file: [(failure_file, source, rows)]."""
        import pyarrow.parquet as pq

        by_name = {s.name: s for s in sources}
        plan = []
        for failure_file in manifest.unresolved_failures():
            table = pq.read_table(self.out / failure_file, columns=["file", "row"])
            files = table.column("file").to_pylist()
            rows = table.column("row").to_pylist()
            for name in dict.fromkeys(files):
                if name not in by_name:
                    raise InputError(f"{failure_file}: failed rows come from {name}, which is no longer an input")
                plan.append((failure_file, by_name[name], [r for f, r in zip(files, rows, strict=True) if f == name]))
        return plan

    # --------------------------------------------------------------------------------- pipeline

    async def _pipeline(self, sources, columns, retry_units) -> None:
        limits = self.job.limits
        window = max(4, -(-limits.concurrency * self.model.batch_inputs * 2 // CHUNK_ROWS) + 2)
        self._slots = asyncio.Semaphore(window)
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self._pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        n_workers = limits.concurrency
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(sources, columns, retry_units, n_workers))
                self._workers = [tg.create_task(self._worker()) for _ in range(n_workers)]
                writer = tg.create_task(self._writer())
                tg.create_task(self._ticker(writer))
        except BaseExceptionGroup as group:
            # Surface the first real failure (an AuthError, an InputError...), not the group.
            raise _first_error(group) from None

    def _chunk_stream(self, sources, columns, retry_units):
        """All chunks of this run: previously failed rows first, then the units not yet committed."""
        if retry_units:
            resolves = list(dict.fromkeys(f for f, _, _ in retry_units))
            n = sum(1 for s in self.manifest.shards if s.kind == "retry")
            unit = Unit(f"part-r{n:05d}.parquet", None, resolves=resolves)
            yield from retry_chunks([(src, rows) for _, src, rows in retry_units], columns, unit, CHUNK_ROWS)
        yield from iter_chunks(sources, self.manifest, columns, self.job.output.shard_rows, CHUNK_ROWS)

    async def _reader(self, sources, columns, retry_units, n_workers: int) -> None:
        stream = self._chunk_stream(sources, columns, retry_units)
        sentinel = object()
        try:
            while self.stopping is None:
                await self._slots.acquire()
                chunk = await asyncio.to_thread(next, stream, sentinel)
                if chunk is sentinel or self.stopping is not None:
                    self._slots.release()
                    break
                piece, requests = await asyncio.to_thread(self._prepare, chunk)
                await self._pieces.put(piece)
                for request in requests:
                    self._requests.put_nowait(request)
                if piece.pending == 0:
                    self._piece_done(piece)
        finally:
            stream.close()
            await self._pieces.put(None)
            for _ in range(n_workers):
                await self._requests.put(None)

    # ----------------------------------------------------------------------------- prepare (pure)

    def _prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """Texts, blank rows, dedup, token counts, too-long policy and request packing for one chunk."""
        job = self.job
        table = chunk.table
        n = table.num_rows
        positions = (
            np.asarray(chunk.rows, dtype=np.int64)
            if chunk.rows is not None
            else np.arange(chunk.first_row, chunk.first_row + n, dtype=np.int64)
        )
        texts = build_texts(table, job.input.text)
        blank = blank_mask(texts)
        if blank.any() and job.input.on_empty == "fail":
            row = int(positions[np.flatnonzero(blank)[0]])
            raise InputError(f"{chunk.source.path}: row {row}: text is empty or null (input.on_empty = 'fail')")
        texts = add_prefix(texts, self.prefix)
        sendable = np.flatnonzero(~blank)
        encoded = pc.dictionary_encode(texts.take(pa.array(sendable, pa.int64())))
        unique = encoded.dictionary
        row_to_text = np.full(n, -1, dtype=np.int64)
        row_to_text[sendable] = encoded.indices.to_numpy(zero_copy_only=False)
        counts = self.counter.count(unique) if len(unique) else np.zeros(0, np.int64)
        unique_texts = unique.to_pylist()
        skipped = int(blank.sum())
        too_long = np.flatnonzero(counts > self.input_tokens)
        if len(too_long):
            policy = job.limits.on_too_long
            if policy == "fail":
                row = int(positions[np.flatnonzero(row_to_text == too_long[0])[0]])
                raise InputError(
                    f"{chunk.source.path}: row {row}: text has about {counts[too_long[0]]} tokens, over "
                    f"limits.input_tokens = {self.input_tokens} (limits.on_too_long = 'fail')"
                )
            if policy == "truncate":
                for i in too_long:
                    unique_texts[i] = self.counter.truncate(unique_texts[i], self.input_tokens)
                cut = self.counter.count(pa.array([unique_texts[i] for i in too_long], pa.string()))
                counts[too_long] = np.minimum(cut, self.input_tokens)
            else:  # skip: keep the rows with a null vector, never send them
                dropped = np.isin(row_to_text, too_long)
                skipped += int(dropped.sum())
                row_to_text[dropped] = -1
        sent = row_to_text[row_to_text >= 0]
        self.stats.tokens_saved += int(counts[sent].sum() - counts[np.unique(sent)].sum())
        keep_cols = {}
        if job.input.id:
            keep_cols[self.id_column] = table.column(job.input.id)
        else:
            keep_cols[self.id_column] = pc.binary_join_element_wise(
                f"{chunk.source.name}:", pc.cast(pa.array(positions), pa.string()), ""
            )
        for name in job.input.keep:
            if name not in keep_cols:
                keep_cols[name] = table.column(name)
        piece = Piece(
            chunk=chunk,
            table=pa.table(keep_cols),
            positions=positions,
            row_to_text=row_to_text,
            texts=unique_texts,
            tokens=counts,
            skipped=skipped,
        )
        to_send = np.unique(row_to_text[row_to_text >= 0])
        batches = pack(counts[to_send], self.model.batch_inputs, job.limits.batch_tokens)
        piece.pending = len(batches)
        requests = [Request(piece, to_send[a:b], int(counts[to_send[a:b]].sum())) for a, b in batches]
        return piece, requests

    # ------------------------------------------------------------------------------------ sending

    async def _worker(self) -> None:
        while True:
            try:
                request = await self._requests.get()
            except asyncio.CancelledError:
                if self.stopping is None:
                    raise
                continue  # cancelled by the stop grace timer while idle: keep draining
            if request is None:
                return
            piece = request.piece
            if self.stopping is not None or piece.abandoned:
                piece.abandoned = True
            else:
                try:
                    await self._send(request)
                except asyncio.CancelledError:
                    piece.abandoned = True
                    if self.stopping is None:
                        raise
                except Stop:
                    piece.abandoned = True
            piece.pending -= 1
            if piece.pending == 0:
                self._piece_done(piece)

    async def _send(self, request: Request) -> None:
        """Send one request with retries; split on 413 and too-long; dead-letter what still fails."""
        piece = request.piece
        texts = [piece.texts[i] for i in request.index]
        attempt = 0
        while True:
            if self.stopping is not None and attempt:
                raise Stop()
            error: APIError | None = None
            async with self.limits.window.slot():
                await self.limits.admit(request.tokens)
                self.stats.in_flight += 1
                self.stats.requests += 1
                began = time.monotonic()
                try:
                    result = await self.embedder.embed(texts)
                except APIError as exc:
                    error = exc
                finally:
                    self.stats.in_flight -= 1
                    self.stats.latencies.append(time.monotonic() - began)
            if error is None:
                try:
                    self._accept(request, result)
                except MalformedResponse as exc:
                    error = exc
                else:
                    return
            if isinstance(error, AuthError):
                raise error
            if isinstance(error, (InputTooLong, PayloadTooLarge, TerminalAPIError)):
                if isinstance(error, TerminalAPIError) and not self.succeeded_once:
                    # Nothing has worked yet: this is the job's settings, not one row. Stop now.
                    raise error
                await self._split_or_fail(request, error)
                return
            # transient or malformed: back off and retry
            attempt += 1
            self.stats.retries[error.label] += 1
            if attempt > self.job.limits.max_retries:
                self.exhausted_in_a_row += 1
                if self.exhausted_in_a_row >= GIVE_UP_AFTER:
                    raise TransientAPIError(
                        f"{GIVE_UP_AFTER} requests in a row failed after {self.job.limits.max_retries} retries; "
                        f"giving up (last error: {error}). Committed shards are kept; run again to resume.",
                        error.status,
                    )
                self._dead_letter(request, f"gave up after {self.job.limits.max_retries} retries: {error}")
                return
            delay = backoff(attempt - 1, error.retry_after)
            if error.status in (429, 503):
                self.limits.window.on_throttled(error.retry_after)
            await asyncio.sleep(delay)

    async def _split_or_fail(self, request: Request, error: APIError) -> None:
        if len(request.index) == 1:
            self._dead_letter(request, str(error))
            return
        self.stats.retries[f"split-{error.label}"] += 1
        (a0, a1), (b0, b1) = halves(0, len(request.index))
        piece = request.piece
        parts = [request.index[a0:a1], request.index[b0:b1]]
        await asyncio.gather(*(self._send(Request(piece, p, int(piece.tokens[p].sum()))) for p in parts))

    def _accept(self, request: Request, result) -> None:
        vectors = result.vectors
        if vectors.shape[0] != len(request.index):
            raise MalformedResponse(f"asked for {len(request.index)} vectors, got {vectors.shape[0]}")
        dim = vectors.shape[1]
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise MalformedResponse(f"got {dim}-dimensional vectors, expected {self.dim}")
        piece = request.piece
        if piece.vectors is None:
            piece.vectors = np.zeros((len(piece.texts), dim), dtype=np.float32)
        piece.vectors[request.index] = vectors
        self.succeeded_once = True
        self.exhausted_in_a_row = 0
        self.limits.window.on_success()
        self.limits.observe_headers(result.headers)
        reported = result.prompt_tokens
        if reported:
            self.counter.observe(request.tokens, reported)
        self.stats.tokens += reported or request.tokens
        piece.chunk.unit.tokens += reported or request.tokens

    def _dead_letter(self, request: Request, message: str) -> None:
        for i in request.index:
            request.piece.errors[int(i)] = redact(message)

    def _piece_done(self, piece: Piece) -> None:
        if not piece.abandoned:
            failed = int(np.isin(piece.row_to_text, list(piece.errors)).sum()) if piece.errors else 0
            self.stats.rows_failed += failed
            self.stats.rows_skipped += piece.skipped
            self.stats.rows_embedded += piece.table.num_rows - failed - piece.skipped
        piece.done.set()

    # ------------------------------------------------------------------------------------ writing

    async def _writer(self) -> None:
        """Write pieces in unit order; commit a unit's shard when its last piece is written."""
        current: Unit | None = None
        shard: ShardWriter | None = None
        failures: list[pa.Table] = []
        broken: Unit | None = None  # a unit with an abandoned piece cannot be committed
        try:
            while True:
                piece = await self._pieces.get()
                if piece is None:
                    break
                await piece.done.wait()
                unit = piece.chunk.unit
                if unit is not current:
                    current, failures = unit, []
                if piece.abandoned or broken is unit:
                    broken = unit
                    if shard is not None:
                        shard.abort()
                        shard = None
                    self._slots.release()
                    continue
                table, failed = self._piece_tables(piece)
                if shard is None:
                    if self.dim is None:
                        await self._probe_dimension()
                    schema = table.schema.with_metadata(self._metadata())
                    shard = await asyncio.to_thread(
                        ShardWriter, self.out, unit.name, schema, self.job.output.compression
                    )
                await asyncio.to_thread(shard.write, table)
                if failed is not None:
                    failures.append(failed)
                self._slots.release()
                if piece.chunk.last:
                    await asyncio.to_thread(self._commit, unit, shard, failures)
                    shard, current, failures = None, None, []
        finally:
            if shard is not None:
                shard.abort()

    async def _probe_dimension(self) -> None:
        """Learn the vector size when the first shard starts with rows that were never sent."""
        result = await self.embedder.embed(["dimension probe"])
        self.dim = result.vectors.shape[1]

    def _metadata(self) -> dict[str, str]:
        return {
            "batchembed": json.dumps(
                {
                    "version": __version__,
                    "provider": self.model.provider,
                    "model": self.model.name,
                    "dimensions": self.dim,
                    "column": self.job.output.column,
                    "text": self.job.input.text,
                }
            )
        }

    def _piece_tables(self, piece: Piece) -> tuple[pa.Table, pa.Table | None]:
        """The shard rows of a piece (failed rows left out) and the failed rows' table, if any."""
        n = piece.table.num_rows
        dim = self.dim
        rows = piece.row_to_text
        valid = rows >= 0
        failed_mask = np.zeros(n, dtype=bool)
        if piece.errors:
            failed_mask = np.isin(rows, np.fromiter(piece.errors, np.int64))
            valid &= ~failed_mask
        if piece.vectors is not None:
            vectors = piece.vectors[np.where(valid, rows, 0)]
        else:
            vectors = np.zeros((n, dim), dtype=np.float32)
        table = piece.table.append_column(
            pa.field(self.job.output.column, pa.list_(pa.float32(), dim)), vector_array(vectors, valid)
        )
        failed = None
        if failed_mask.any():
            idx = np.flatnonzero(failed_mask)
            failed = pa.table(
                {
                    "id": pc.cast(piece.table.column(self.id_column).take(pa.array(idx)), pa.string()),
                    "file": pa.array([piece.chunk.source.name] * len(idx), pa.string()),
                    "row": pa.array(piece.positions[idx], pa.int64()),
                    "error": pa.array([piece.errors[int(rows[i])] for i in idx], pa.string()),
                }
            )
            table = table.filter(pa.array(~failed_mask))
        return table, failed

    def _commit(self, unit: Unit, shard: ShardWriter, failures: list[pa.Table]) -> None:
        """Make a unit durable: shard, its failed rows, then the manifest entry (the commit point)."""
        written = shard.commit()
        failpoint("shard-before-manifest")
        failed_file = None
        n_failed = 0
        if failures:
            (self.out / FAILED_DIR).mkdir(exist_ok=True)
            table = pa.concat_tables(failures)
            n_failed = table.num_rows
            failed_file = f"{FAILED_DIR}/{unit.name}"
            write_table_atomically(self.out / FAILED_DIR, unit.name, table)
        record = ShardRecord(
            name=unit.name,
            kind=unit.kind,
            file=unit.source.name if unit.source else None,
            start=unit.start,
            end=unit.end if unit.end is not None else unit.start,
            eof=unit.eof,
            rows=written.rows,
            failed=n_failed,
            failed_file=failed_file,
            size=written.size,
            sha256=written.sha256,
            tokens=unit.tokens,
            resolves=list(unit.resolves),
        )
        self.manifest.shards.append(record)
        self.manifest.resolved.extend(unit.resolves)
        self.manifest.save(self.out)

    # ------------------------------------------------------------------------------------- ending

    async def _ticker(self, writer: asyncio.Task) -> None:
        while not writer.done():
            self.progress.refresh()
            await asyncio.wait({writer}, timeout=0.5)

    def _finish_files(self) -> None:
        """Rebuild _failed.parquet from the unresolved failure files and write _report.json."""
        import pyarrow.parquet as pq

        if self.manifest is None:
            return
        unresolved = self.manifest.unresolved_failures()
        self._unresolved = sum(pq.ParquetFile(self.out / f).metadata.num_rows for f in unresolved)
        if unresolved:
            write_table_atomically(self.out, FAILED, pa.concat_tables(pq.read_table(self.out / f) for f in unresolved))
        else:
            (self.out / FAILED).unlink(missing_ok=True)
        report = self.stats.report(
            version=__version__,
            model=self.model.name,
            provider=self.model.provider,
            dimensions=self.dim,
            output=str(self.out),
            failed_rows_outstanding=self._unresolved,
        )
        tmp = self.out / (REPORT + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, self.out / REPORT)

    def _conclude(self) -> int:
        s = self.stats
        if self.stopping is not None:
            self.progress.line(
                f"stopped: {s.rows_done:,} rows done this run; committed shards are kept. "
                "Run the same command again to resume."
            )
            return EXIT_SIGINT if self.stopping == signal.SIGINT else EXIT_SIGTERM
        summary = (
            f"done: {s.rows_embedded:,} rows embedded, {s.rows_skipped:,} skipped, {s.rows_failed:,} failed, "
            f"{s.tokens:,} tokens, {s.requests:,} requests in {s.elapsed:.1f}s -> {self.out}"
        )
        self.progress.line(summary)
        if self._unresolved:
            self.progress.line(
                f"{self._unresolved:,} rows failed and are listed in {self.out / FAILED}; "
                "run the same command again to retry them"
            )
            return EXIT_PARTIAL
        self.manifest.complete = True
        self.manifest.save(self.out)
        (self.out / SUCCESS).write_bytes(b"")
        fsync_dir(self.out)
        return EXIT_OK


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group
