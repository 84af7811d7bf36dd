"""Test doubles that ship with batchembed: the fake OpenAI/Fireworks embeddings and rerank server.

One behaviour, two ways to reach it: :class:`FakeProvider` answers in-process through
``FakeProvider.transport()`` (hand it to ``build_runner(job, transport=...)``), :class:`FakeServer`
serves the same handler on 127.0.0.1 for subprocesses and real-HTTP tests. It lives in the package
(not under ``tests/``) so the test suite, ``benchmarks/`` and a user's own tests of their jobs all
import the same one. :class:`FakeBatchProvider` / :class:`FakeBatchServer` add the providers' batch APIs
(files, batches, the paged list) in front of it, for the batch tier.
"""

from batchembed.testing.answers import MAX_DIM, expected_score, expected_vector, token_count
from batchembed.testing.batchapi import FakeBatchProvider, FakeBatchServer
from batchembed.testing.fakeserver import FakeProvider
from batchembed.testing.loopback import FakeServer
from batchembed.testing.rules import Delay, RecordedRequest, Reset, Respond

__all__ = [
    "MAX_DIM",
    "Delay",
    "FakeBatchProvider",
    "FakeBatchServer",
    "FakeProvider",
    "FakeServer",
    "RecordedRequest",
    "Reset",
    "Respond",
    "expected_score",
    "expected_vector",
    "token_count",
]
