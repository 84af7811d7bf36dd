"""The dedup layer in front of the embedder, in-process: a fake embedder, a counting meter, a real memo."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from batchembed.errors import TransientAPIError
from batchembed.providers.base import EmbeddingResult
from batchembed.stats import Stats
from batchembed.tasks.dedup import SharedEmbedder
from batchembed.tasks.memo import VectorMemo, text_keys


class FakeEmbedder:
    """Vectors [len(text), 1]; holds each call until ``gate`` is set; fails the calls listed in ``fail``."""

    def __init__(self, fail=()) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail = set(fail)
        self.arrived = asyncio.Condition()

    async def embed(self, texts):
        self.calls.append(list(texts))
        number = len(self.calls)
        async with self.arrived:
            self.arrived.notify_all()
        await self.gate.wait()
        if number in self.fail:
            raise TransientAPIError("busy", 503)
        return EmbeddingResult(np.array([[len(t), 1.0] for t in texts], np.float32), prompt_tokens=len(texts))

    async def until(self, n: int) -> None:
        """Wait until ``n`` calls have arrived (a caller claims its texts before it calls)."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.calls) >= n)


class CountingMeter:
    """Stands in for the sender's meter: records what each call was charged."""

    def __init__(self) -> None:
        self.charged: list[int] = []

    @contextlib.asynccontextmanager
    async def __call__(self, tokens):
        self.charged.append(tokens)
        yield


def _layer(embedder) -> tuple[SharedEmbedder, Stats]:
    stats = Stats()
    return SharedEmbedder(embedder, VectorMemo(1 << 20), stats, lambda result, n: None), stats


def _ask(layer, texts, meter):
    keys = text_keys(texts)
    tokens = np.full(len(texts), 10, np.int64)
    return layer.embed(keys, texts, tokens, 10 * len(texts), meter)


def test_a_text_in_flight_is_sent_once_and_shared():
    async def go():
        embedder = FakeEmbedder()
        layer, stats = _layer(embedder)
        first, second = CountingMeter(), CountingMeter()
        a = asyncio.create_task(_ask(layer, ["aa", "bbb"], first))
        await embedder.until(1)  # a's texts are in flight
        b = asyncio.create_task(_ask(layer, ["bbb", "cccc"], second))
        await embedder.until(2)  # b sends "cccc" and waits for a's "bbb"
        embedder.gate.set()
        return await a, await b, embedder, first, second, stats

    a, b, embedder, first, second, stats = asyncio.run(go())
    assert embedder.calls == [["aa", "bbb"], ["cccc"]]
    assert first.charged == [20] and second.charged == [10]  # each pays only for what it sent
    assert b.vectors.tolist() == [[3, 1], [4, 1]] and a.vectors.tolist() == [[2, 1], [3, 1]]
    assert b.prompt_tokens == 1 and stats.tokens_saved == 10


def test_the_memo_answers_without_sending_or_charging():
    async def go():
        embedder = FakeEmbedder()
        embedder.gate.set()
        layer, stats = _layer(embedder)
        await _ask(layer, ["aa"], CountingMeter())
        meter = CountingMeter()
        answer = await _ask(layer, ["aa"], meter)
        return answer, meter, embedder, stats

    answer, meter, embedder, stats = asyncio.run(go())
    assert len(embedder.calls) == 1 and meter.charged == []
    assert answer.vectors.tolist() == [[2, 1]] and answer.prompt_tokens is None and stats.tokens_saved == 10


def test_when_the_sender_of_a_shared_text_fails_the_waiter_sends_it_itself():
    async def go():
        embedder = FakeEmbedder(fail={1})
        layer, _ = _layer(embedder)
        a = asyncio.create_task(_ask(layer, ["aa"], CountingMeter()))
        await embedder.until(1)
        b = asyncio.create_task(_ask(layer, ["aa", "dd"], CountingMeter()))
        await embedder.until(2)  # b sends "dd" and waits for a's "aa"
        embedder.gate.set()
        with pytest.raises(TransientAPIError):
            await a
        return await b, embedder

    b, embedder = asyncio.run(go())
    assert embedder.calls == [["aa"], ["dd"], ["aa"]]  # a's "aa" failed: b sent it itself
    assert b.vectors.tolist() == [[2, 1], [2, 1]]


def test_a_text_another_unit_awaits_is_marked_and_its_units_are_told_once_it_is_answered():
    layer, _ = _layer(FakeEmbedder())
    keys = text_keys(["aa", "bbb"])
    assert layer.expect("part-00001.parquet", keys[1:]).tolist() == [False]
    assert layer.expect("part-00002.parquet", keys).tolist() == [False, True]  # "bbb" is sent by unit 1
    assert layer.expecting(keys) == {"part-00002.parquet": [0, 1], "part-00001.parquet": [1]}
    assert layer.expecting(keys) == {}  # told once
