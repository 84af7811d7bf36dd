"""Never pay twice for one text: a layer in front of the embedder, shared by every request of a run.

Within a chunk the embed task sends each distinct text once (dictionary encoding). Across chunks
this layer does the rest, at the moment a request is sent:

* a text the ``VectorMemo`` knows (answered earlier in the run, or in the ``[cache]`` file) is
  answered from there;
* a text another request is sending right now is not sent again: this request waits for that
  answer (the sending request's future, awaited outside any concurrency slot);
* only the rest goes to the provider, through the sender's meter, so the request is paced and
  charged for what it really sends (nothing at all when every text was found elsewhere).

If the request that was sending a text fails or is abandoned, the texts waiting on it are sent by
their own request instead (which then retries, splits or dead-letters them like any other). The
answer handed back holds a vector for every text asked for, so the journal keeps the shared
answers too (a kill before the unit commits does not buy them again).

A request may wait in the queue long after another one answered its texts; so that a kill in
between does not buy them again either, a prepared piece notes which texts its unit still waits for
(``expect``), and whoever answers one of them hands it to those units' journals too (``expecting``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from batchembed.providers.base import Embedder, EmbeddingResult
from batchembed.stats import Stats
from batchembed.tasks.memo import VectorMemo


class _Unanswered(Exception):
    """The request sending a text ended without its answer: whoever waited sends it itself."""


def _quiet(future: asyncio.Future) -> None:
    """Retrieve a future's exception so that nobody waiting on it is not an error worth logging."""
    if not future.cancelled():
        future.exception()


class SharedEmbedder:
    """Embeds texts by key through the memo, the requests in flight, and only then ``embedder``.

    ``check(result, n)`` validates an answer for ``n`` texts before anything is remembered (raises
    ``MalformedResponse``/``ServerIgnoredSettings``): a wrong answer never reaches the memo or cache.
    """

    def __init__(
        self, embedder: Embedder, memo: VectorMemo, stats: Stats, check: Callable[[EmbeddingResult, int], None]
    ) -> None:
        self.embedder = embedder
        self.memo = memo
        self.stats = stats
        self.check = check
        # text key -> (the future of the request sending it: its vectors, the text's row in them)
        self._in_flight: dict[bytes, tuple[asyncio.Future, int]] = {}
        self._expected: dict[bytes, set[str]] = {}  # text key -> units whose pieces wait for its answer
        self._expected_lock = threading.Lock()  # ``expect`` runs on the reader thread
        # text key -> (reason, tokens and characters before, characters kept): texts whose answer is that
        # of the text cut after the server's "too long" (the memo keeps it under the uncut text's key)
        self.cuts: dict[bytes, tuple[str, int, int, int]] = {}

    def lookup(self, keys: np.ndarray) -> dict[bytes, np.ndarray]:
        """Vectors the memo (or the cache file) already holds for ``keys`` (any thread; used by ``prepare``)."""
        return self.memo.lookup(keys) if len(keys) else {}

    def recall(self, key: bytes) -> np.ndarray | None:
        """The memo's in-memory vector for one text, if any (cheap: no file access)."""
        return self.memo.recall(key)

    def expect(self, unit: str, keys: np.ndarray) -> np.ndarray:
        """Note that ``unit`` waits for the answers of ``keys`` (any thread); True where another piece
        (of any unit) already waits for the same text, i.e. will send it first."""
        elsewhere = np.zeros(len(keys), dtype=bool)
        with self._expected_lock:
            for at, key in enumerate(keys):
                units = self._expected.get(key)
                if units is None:
                    self._expected[key] = {unit}
                else:
                    elsewhere[at] = True
                    units.add(unit)
        return elsewhere

    def expecting(self, keys: np.ndarray) -> dict[str, list[int]]:
        """Units that wait for ``keys`` now answered: {unit: positions in ``keys``}; they stop waiting."""
        found: dict[str, list[int]] = {}
        with self._expected_lock:
            for at, key in enumerate(keys):
                for unit in self._expected.pop(key, ()):
                    found.setdefault(unit, []).append(at)
        return found

    def remember(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Keep answers found elsewhere (the answer journal of a killed run) for the texts' duplicates.

        ``vectors`` must be the caller's own, never written to again: the memo keeps views of it, as it
        does of the server's answers (no second copy)."""
        self.memo.store(keys, vectors, copy=False)

    async def embed(
        self, keys: np.ndarray, texts: list[str], tokens: np.ndarray, charge: int, meter: Any
    ) -> EmbeddingResult:
        """Vectors for ``texts`` (keys ``keys``, ``tokens`` each), sending only what no one else has.

        ``charge`` is what the request is charged when all of it goes out (its own token figure); a part
        is charged its texts' tokens."""
        n = len(keys)
        vectors: list[np.ndarray | None] = [None] * n
        answers: list[EmbeddingResult] = []
        pending = list(range(n))
        first = True
        while pending:
            own, waits = self._claim(keys, pending, vectors, tokens)
            pending = []
            if own:
                cost = charge if first and len(own) == n else int(tokens[own].sum())
                result = await self._send(keys, texts, own, cost, meter)
                if len(own) == n:  # the usual case: all of it was sent here, the answer is the request's
                    return result
                answers.append(result)
                for at, j in enumerate(own):
                    vectors[j] = result.vectors[at]
            for j, future, row in waits:
                try:
                    vectors[j] = (await asyncio.shield(future))[row]  # never cancel the sender's future
                except _Unanswered:
                    pending.append(j)  # its sender failed: send it here
                else:
                    self.stats.tokens_saved += int(tokens[j])
            first = False
        return _combined(np.stack(vectors) if n else np.zeros((0, 0), np.float32), answers)

    def _claim(self, keys, pending, vectors, tokens) -> tuple[list[int], list[tuple[int, asyncio.Future, int]]]:
        """Split ``pending`` into texts to send (now in flight here), to wait for, and known (filled in)."""
        own: list[int] = []
        waits: list[tuple[int, asyncio.Future, int]] = []
        wanted = [keys[j] for j in pending]
        recalled = self.memo.recall_many(wanted)  # answered since ``prepare`` looked
        if not recalled and self._in_flight.keys().isdisjoint(wanted):
            pending, own = [], list(pending)  # the usual case: every text is new, claimed in one go
        for j in pending:
            key = keys[j]
            sending = self._in_flight.get(key)
            if sending is not None:
                waits.append((j, *sending))
                continue
            vec = recalled.get(key)
            if vec is not None:
                vectors[j] = vec
                self.stats.tokens_saved += int(tokens[j])
                continue
            own.append(j)
        if own:
            future = asyncio.get_running_loop().create_future()  # one per request sent: its vectors
            future.add_done_callback(_quiet)
            for row, j in enumerate(own):
                self._in_flight[keys[j]] = (future, row)
        return own, waits

    async def _send(self, keys, texts, own: list[int], cost: int, meter: Any) -> EmbeddingResult:
        """Send the texts ``own`` through the meter; settle their future whatever happens."""
        mine = [keys[j] for j in own]
        future = self._in_flight[mine[0]][0]
        try:
            async with meter(cost):
                result = await self.embedder.embed([texts[j] for j in own])
            self.check(result, len(own))
            self.stats.texts_bought += len(own)
            # the memo keeps views of the answer's own matrix (never written to again): no second copy
            self.memo.store(np.asarray(mine, dtype=object), result.vectors, copy=False)
        except BaseException:
            self._forget(mine)
            future.set_exception(_Unanswered())
            raise
        self._forget(mine)
        future.set_result(result.vectors)
        return result

    def _forget(self, keys: list[bytes]) -> None:
        for key in keys:
            del self._in_flight[key]

    def close(self) -> None:
        """Close the memo's cache file."""
        self.memo.close()


def _combined(vectors: np.ndarray, answers: list[EmbeddingResult]) -> EmbeddingResult:
    """One answer for the whole request: every vector, the usage and headers of what was really sent."""
    if not answers:
        return EmbeddingResult(vectors, prompt_tokens=None, headers={}, model=None)
    reported = [a.prompt_tokens for a in answers]
    last = answers[-1]
    return EmbeddingResult(
        vectors,
        prompt_tokens=sum(reported) if all(r is not None for r in reported) else None,
        headers=last.headers,
        model=last.model,
    )
