"""Count (and cut) tokens: a real tokenizer when one is configured, else a calibrated estimate.

Token counts decide batch sizes and what the tokens/min limiter is charged, so an estimate must err
on the high side: too high only costs a little packing efficiency, too low earns 400s and 429s.
"""

from __future__ import annotations

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
    """Bytes-per-token estimate that starts conservative and calibrates itself from server usage.

    It starts at 3 UTF-8 bytes per token (English averages about 4 with BPE tokenizers; CJK about 3)
    plus 2 special tokens per input, and moves towards what servers actually report, keeping a 10%
    margin. It never claims more than 4.5 bytes per token, so a server that reports nothing useful
    cannot make it reckless.
    """

    name = "estimate"
    START = 3.0
    CEILING = 4.5
    FLOOR = 1.0
    OVERHEAD = 2

    def __init__(self) -> None:
        self._bytes_per_token = self.START
        self._lock = threading.Lock()

    @property
    def bytes_per_token(self) -> float:
        """The ratio currently in use."""
        return self._bytes_per_token

    def count(self, texts: pa.Array) -> np.ndarray:
        """Estimated tokens per text from its UTF-8 byte length."""
        nbytes = pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.ceil(nbytes / self._bytes_per_token).astype(np.int64) + self.OVERHEAD

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut to the byte budget ``max_tokens`` allows, on a character boundary."""
        budget = int((max_tokens - self.OVERHEAD) * self._bytes_per_token)
        raw = text.encode("utf-8")
        if len(raw) <= budget:
            return text
        return raw[: max(budget, 0)].decode("utf-8", errors="ignore")

    def observe(self, estimated: int, reported: int) -> None:
        """Move the ratio towards the one implied by the server's count, with a 10% safety margin."""
        if reported <= 0 or estimated <= 0:
            return
        with self._lock:
            # bytes in the batch ~= (estimated - overhead) * ratio; implied ratio = bytes / reported
            implied = estimated * self._bytes_per_token / reported / 1.1
            target = min(max(implied, self.FLOOR), self.CEILING)
            # Drop at once when the server counts more than we do; rise slowly when it counts less.
            if target < self._bytes_per_token:
                self._bytes_per_token = target
            else:
                self._bytes_per_token += 0.2 * (target - self._bytes_per_token)


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
        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as exc:
            raise ConfigError(f"limits.tokenizer: cannot load tiktoken encoding {encoding!r}: {exc}") from None
        self.name = f"tiktoken:{encoding}"

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


def make_counter(spec: str) -> TokenCounter:
    """Pick the counter a ``limits.tokenizer`` value names."""
    if spec == "estimate":
        return EstimateCounter()
    if spec.endswith(".json") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise ConfigError(f"limits.tokenizer: no such file {spec!r}")
        return HFTokenizerCounter(spec)
    return TiktokenCounter(spec)
