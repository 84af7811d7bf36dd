"""What batchembed checks about the server that answers, so that a quirky server cannot damage output.

* ``UsageCheck``: a server whose ``usage.prompt_tokens`` is far from our own count (Infinity reports
  characters) is reported once; its usage only ever tunes pacing, never what is cut or sent.
* ``ServedModel``: the ``model`` an answer names is recorded (manifest, Parquet metadata), with one
  warning when it is not the model asked for.
* The canary: at the start of every run a fixed text is embedded and its vector kept in the manifest;
  when a resume's canary points elsewhere (cosine < 0.999) a different model answers behind the same
  name, and mixing two models' vectors in one output is refused unless the user accepts it. When the
  job asks for ``dimensions`` and nothing else knows whether the model's full vectors are unit length,
  ``full_vector_probe`` asks for the canary's full vector once per job (``normalize.learn_unit_norm``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from batchembed.errors import APIError, AuthError, ResumeRefused, ServerIgnoredSettings, TerminalAPIError
from batchembed.providers.retry import backoff
from batchembed.sending.outage import ServerWatch

#: Embedded at the start of every run; its vector identifies the model behind the name.
CANARY_TEXT = "batchembed canary: the quick brown fox jumps over the lazy dog (0123456789)."
#: Below this cosine between two runs' canary vectors, a different model is answering.
CANARY_MIN_COSINE = 0.999
#: Our count and the server's differ by more than this factor (either way): say so once.
USAGE_MISMATCH = 2.0


class UsageCheck:
    """Compare the server's token counts with ours over the first answers; warn once when far apart."""

    def __init__(self, say: Callable[[str], None], counter_name: str) -> None:
        self._say = say
        self._counter = counter_name
        self._ours = 0
        self._theirs = 0
        self._answers = 0
        self.ratio: float | None = None
        self.warned = False

    def observe(self, estimated: int, reported: int) -> None:
        """One answer: we counted ``estimated`` tokens, the server ``reported``."""
        if self.warned or estimated <= 0 or reported <= 0:
            return
        self._ours += estimated
        self._theirs += reported
        self._answers += 1
        if self._answers < 3:
            return
        self.ratio = self._theirs / self._ours
        if self.ratio > USAGE_MISMATCH or self.ratio < 1 / USAGE_MISMATCH:
            self.warned = True
            self._say(
                f"the server's usage counts {self.ratio:.2f}x the tokens batchembed counts ({self._counter}): "
                "batchembed uses usage for pacing only (what a request is charged against tokens/min), "
                "never to decide what is cut or sent"
            )


def same_model(requested: str, served: str) -> bool:
    """Whether ``served`` names ``requested`` (ignoring case and an account/path prefix)."""
    return requested.lower().rsplit("/", 1)[-1] == served.lower().rsplit("/", 1)[-1]


class ServedModel:
    """The model the server says answered; one warning when it is not the one asked for."""

    def __init__(self, requested: str, say: Callable[[str], None]) -> None:
        self.requested = requested
        self.served: str | None = None
        self._say = say
        self._warned = False

    def observe(self, served: str | None) -> None:
        """Record the ``model`` of one answer."""
        if not served:
            return
        if self.served is None:
            self.served = served
        if not self._warned and not same_model(self.requested, served):
            self._warned = True
            self._say(
                f"the server answered with model {served!r}, not the requested {self.requested!r}; "
                "recorded in the manifest and the shards' metadata"
            )

    def record(self, manifest: Any) -> None:
        """Keep the served model in the manifest (saved with the next commit)."""
        if self.served:
            manifest.server["served_model"] = self.served
            manifest.server["requested_model"] = self.requested


async def run_canary(
    embedder: Any,
    limits: Any,
    manifest: Any,
    served: ServedModel,
    *,
    max_retries: int,
    accept_change: bool,
    where: str,
    say: Callable[[str], None],
    watch: ServerWatch | None = None,
) -> np.ndarray:
    """At the start of a run: embed the canary, check it against the manifest's, record both there.

    Returns the canary vector (its length is the job's vector size). The caller saves the manifest.
    A generation that only rewrites shards from the vectors the output holds (``manifest.rewrite_only``:
    a kept column changed, no input did) buys nothing: the stored canary is returned, nothing is sent.
    """
    stored = manifest.server.get("canary")
    if getattr(manifest, "rewrite_only", False) and stored and stored.get("text") == CANARY_TEXT:
        return np.asarray(stored["vector"], dtype=np.float32)
    answer = await embed_canary(embedder, limits, max_retries, watch)
    served.observe(answer.model)
    vector = answer.vectors[0]
    manifest.server["canary"] = check_canary(
        manifest.server.get("canary"),
        vector,
        committed=bool(manifest.shards),
        accept_change=accept_change,
        where=where,
        say=say,
    )
    served.record(manifest)
    return vector


async def embed_canary(embedder: Any, limits: Any, max_retries: int, watch: ServerWatch | None = None) -> Any:
    """Embed ``CANARY_TEXT`` (retrying transient failures); the answer also teaches the limiter.

    Raises what a job's settings cause at once (a wrong model name, a bad key, a refused field, a
    server ignoring ``dimensions``): nothing has been sent yet, so this is the cheapest place to stop.
    A server that cannot be reached is the ``watch``'s to judge: named at once, retried for the connect
    window (``ServerUnreachable`` after it), waited for during an outage.
    """
    attempt = away = 0
    while True:
        try:
            result = await embedder.embed([CANARY_TEXT])
        except APIError as exc:
            limits.observe(exc.headers, exc.status, 20)
            if isinstance(exc, AuthError) and watch is not None:
                raise watch.refused(exc) from None
            if isinstance(exc, (AuthError, TerminalAPIError, ServerIgnoredSettings)):
                raise
            ride = watch.failed(exc, embed_canary, away) if watch is not None else None
            if ride is not None:  # the server cannot be reached: the watch says how long to wait
                away += 1
                await asyncio.sleep(ride)
                continue
            away = 0
            if attempt >= max_retries:
                raise
            if exc.status in (429, 503):
                limits.window.on_throttled(exc.retry_after)
            await asyncio.sleep(backoff(attempt, exc.retry_after))
            attempt += 1
            continue
        limits.observe(result.headers, 200, 20)
        if watch is not None:
            watch.answered()
        return result


def full_vector_probe(
    embedder: Any, limits: Any, max_retries: int, watch: ServerWatch | None = None
) -> Callable[[], Awaitable[np.ndarray]] | None:
    """What asks for the canary text's full vector (no ``dimensions``; retried like the canary), for
    learning whether the model's vectors are unit length; None for an embedder that cannot ask."""
    full = getattr(embedder, "embed_full", None)
    if full is None:
        return None

    async def probe() -> np.ndarray:
        return (await embed_canary(SimpleNamespace(embed=full), limits, max_retries, watch)).vectors[0]

    return probe


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when either is zero or their sizes differ)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def check_canary(
    stored: dict[str, Any] | None,
    vector: np.ndarray,
    *,
    committed: bool,
    accept_change: bool,
    where: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Compare this run's canary vector with the stored one; return what the manifest should keep.

    Refuses (``ResumeRefused``) when committed rows were embedded by a different model, unless
    ``accept_change``. Without committed rows nothing is bound: the new canary simply replaces the old.
    """
    fresh = {"text": CANARY_TEXT, "vector": [round(float(x), 7) for x in vector]}
    if not committed or not stored or stored.get("text") != CANARY_TEXT:
        return fresh
    similarity = cosine(np.asarray(stored["vector"]), vector)
    if similarity >= CANARY_MIN_COSINE:
        return stored
    message = (
        f"{where}: the model answering now is not the one that embedded the committed rows: the canary "
        f"text's vector has cosine {similarity:.4f} to the one stored at the start (at least "
        f"{CANARY_MIN_COSINE} means the same model)."
    )
    if not accept_change:
        raise ResumeRefused(
            message + " Resuming would mix two models' vectors in one output. Run with --restart to start "
            "over with this model, or --accept-model-change to keep going anyway."
        )
    say(message + " Going on as --accept-model-change asks; the output mixes the two models' vectors.")
    return {**fresh, "accepted_change_from_cosine": round(similarity, 6)}
