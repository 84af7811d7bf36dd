"""How the fake provider checks a request and builds its answer: the knobs a test turns (dimension,
key, limits on inputs, strictness, usage units, ignored settings, rerank shapes) and the wire bodies.

:class:`Answering` is the stateless half of :class:`~batchembed.testing.fakeserver.FakeProvider`;
nothing here records requests, holds them or counts them against rate limits.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from multidict import CIMultiDict

from batchembed.testing.answers import (
    EMBEDDING_SHAPES,
    RERANK_FIELDS,
    Reply,
    base64_json,
    expected_score,
    float_json,
    pool_fragments,
    shaped_encoder,
    token_count,
)


class Answering:
    """Checks requests and builds answers from the knobs below (plain attributes, change them any time)."""

    def __init__(self, dim: int = 64, api_key: str | None = None, *, model: str | None = None) -> None:
        self.dim = dim
        """Native dimension; a request's ``dimensions`` (1..dim) truncates and re-normalises."""
        self.api_key = api_key
        """When set, requests without ``Authorization: Bearer <key>`` get 401."""
        self.model = model
        """When set, requests naming another model get 404 ``model_not_found``."""
        self.max_inputs: int | None = None
        """More inputs (rerank: documents) in one request -> 413."""
        self.max_body_bytes: int | None = None
        """A larger request body -> 413."""
        self.max_input_chars: int | None = None
        """Any longer input -> 400 ``context_length_exceeded``."""
        self.poison: set[str] = set()
        """Texts that always get 400 ``context_length_exceeded`` when present in a request, and so do their
        prefixes (a client that cuts a refused text and sends it again is refused again)."""
        self.reorder = False
        """Return ``data`` in reversed order (indices stay correct)."""
        self.latency = 0.0
        """Seconds added before every answer."""
        self.base64 = True
        """Whether ``encoding_format: "base64"`` is honoured (False: 400 like a strict server)."""
        self.strict = False
        """Reject unknown JSON fields with 400 (like Fireworks' ``additionalProperties: false``)."""
        self.usage_scale = 1.0
        """Multiplies the ``usage`` reported (Infinity reports characters: about 5x tokens)."""
        self.ignore_dimensions = False
        """Answer the native ``dim`` whatever ``dimensions`` asks (a server that does not support it)."""
        self.cut_unnormalized = False
        """Honour ``dimensions`` by cutting the native vector without normalising it again (as Infinity does):
        the answer is :func:`~batchembed.testing.answers.raw_cut_vector`, shorter than unit length."""
        self.vector_scale = 1.0
        """Multiplies every vector answered (a model whose full vectors are not unit length)."""
        self.zero_texts: set[str] = set()
        """Texts always answered with an all-zero vector."""
        self.served_model: str | None = None
        """The ``model`` named in answers (default: the requested one)."""
        self.vector_salt = ""
        """Prepended to every text before its vector is drawn: a different model behind the same name."""
        self.rerank_format = "fireworks"
        """Rerank wire shape: ``fireworks``, ``cohere`` (v2, ``results``), ``jina`` and ``vllm`` (``results``),
        ``voyage`` (``top_k``) or ``tei``."""
        self.embed_format = "openai"
        """Embeddings wire shape: ``openai`` (``dimensions``), ``mistral`` (``output_dimension``) or ``voyage``
        (``output_dimension``, ``encoding_format`` only ``base64``, ``usage`` with ``total_tokens`` only)."""
        self.pool: int | None = None
        """Benchmark mode: answer from ``pool`` precomputed vectors picked by the CRC32 of each text
        (:func:`~batchembed.testing.answers.pool_vectors`); only the native ``dim`` is served."""
        self.pool_seed = 0
        """The seed of the pool's vectors."""

    def _check_auth(self, headers: CIMultiDict[str]) -> None:
        key = self.api_key
        if key is None:
            return
        if headers.get("Authorization", "") != f"Bearer {key}":
            raise Reply(
                401,
                "Incorrect API key provided. You can find your API key in your account settings.",
                "invalid_api_key",
            )

    def _check_count(self, n: int, what: str) -> None:
        if self.max_inputs is not None and n > self.max_inputs:
            raise Reply(413, f"payload too large: {n} {what} > {self.max_inputs}")

    def _check_texts(self, texts: list[str]) -> None:
        limit = self.max_input_chars
        poison = self.poison
        for t in texts:
            if (limit is not None and len(t) > limit) or (poison and any(p.startswith(t) for p in poison)):
                raise Reply(
                    400,
                    f"This model's maximum context length is {limit or 0} characters, "
                    f"however you requested {len(t)} characters. Please reduce your input.",
                    "context_length_exceeded",
                )

    def _check_strict(self, body: dict[str, Any], known: frozenset[str]) -> None:
        if self.strict:
            unknown = sorted(set(body) - known)
            if unknown:
                raise Reply(400, f"unknown field(s) not allowed: {', '.join(unknown)}", "invalid_field")

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Reply(400, "you must provide a model parameter", "missing_model")
        if self.model is not None and model != self.model:
            raise Reply(404, f"The model `{model}` does not exist.", "model_not_found")
        return model

    def _embeddings(self, body: dict[str, Any]) -> tuple[bytes, int]:
        fields, dims_key = EMBEDDING_SHAPES[self.embed_format]
        self._check_strict(body, fields)
        model = self._check_model(body)
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and all(isinstance(t, str) for t in inp):
            texts = inp
        else:
            raise Reply(400, "'input' must be a string or an array of strings")
        if not texts:
            raise Reply(400, "'input' must not be empty")
        if any(t == "" for t in texts):
            raise Reply(400, "'input' must not contain empty strings")
        dims = body.get(dims_key)
        if dims is None or self.ignore_dimensions:
            dims = self.dim
        elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= self.dim:
            raise Reply(400, f"'{dims_key}' must be an integer between 1 and {self.dim}, got {dims!r}")
        fmt = body.get("encoding_format")
        if fmt is None:
            fmt = "float"
        elif self.embed_format == "voyage" and self.strict and fmt != "base64":
            raise Reply(400, f"encoding_format must be null or 'base64', got {fmt!r}")
        if fmt not in ("float", "base64") or (fmt == "base64" and not self.base64):
            raise Reply(400, f"unsupported encoding_format: {fmt!r}")
        self._check_count(len(texts), "inputs")
        self._check_texts(texts)

        tokens = sum(token_count(t) for t in texts)
        order = range(len(texts) - 1, -1, -1) if self.reorder else range(len(texts))
        encode = float_json if fmt == "float" else base64_json
        if self.pool is not None:
            if dims != self.dim:
                raise Reply(400, f"this server only serves {self.dim} dimensions")
            fragments = pool_fragments(self.dim, self.pool, self.pool_seed, fmt)
            pool = self.pool
            encode = lambda text, _dims: fragments[zlib.crc32(text.encode("utf-8")) % pool]  # noqa: E731
        if self.cut_unnormalized or self.vector_scale != 1.0 or self.zero_texts:
            encode = shaped_encoder(fmt, self.dim, self.cut_unnormalized, self.vector_scale, self.zero_texts)
        salt = self.vector_salt
        # Assembled from per-vector cached JSON fragments: large float answers stay cheap.
        items = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, encode(salt + texts[i], dims)) for i in order
        )
        reported = round(tokens * self.usage_scale)
        counts = {"total_tokens": reported} if self.embed_format == "voyage" else {"prompt_tokens": reported}
        usage = orjson.dumps({**counts, "total_tokens": reported})
        served = orjson.dumps(self.served_model or model)
        payload = b'{"object":"list","model":%s,"data":[%s],"usage":%s}' % (served, items, usage)
        return payload, tokens

    def _rerank(self, body: dict[str, Any]) -> tuple[Any, int]:
        fmt = self.rerank_format
        if fmt not in RERANK_FIELDS:
            raise Reply(500, f"fake server misconfigured: rerank_format={fmt!r}")
        self._check_strict(body, RERANK_FIELDS[fmt])
        model = self._check_model(body) if fmt != "tei" else str(body.get("model") or "tei")
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise Reply(400, "'query' must be a non-empty string")
        docs_key = "texts" if fmt == "tei" else "documents"
        docs = body.get(docs_key)
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise Reply(400, f"'{docs_key}' must be a non-empty array of strings")
        top_key = {"voyage": "top_k", "tei": None}.get(fmt, "top_n")
        top = body.get(top_key) if top_key else None
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            raise Reply(400, f"'{top_key}' must be a positive integer")
        self._check_count(len(docs), "documents")
        self._check_texts([query, *docs])

        tokens = token_count(query) + sum(token_count(d) for d in docs)
        scored = sorted(((expected_score(query, d), i) for i, d in enumerate(docs)), key=lambda si: (-si[0], si[1]))
        if top is not None:
            scored = scored[:top]
        default_return = fmt == "fireworks"
        if fmt == "tei":
            return_docs = bool(body.get("return_text", False))
            items = [{"index": i, "score": s, **({"text": docs[i]} if return_docs else {})} for s, i in scored]
            return items, tokens
        return_docs = bool(body.get("return_documents", default_return))
        items = []
        for s, i in scored:
            item: dict[str, Any] = {"index": i, "relevance_score": s}
            if return_docs:
                item["document"] = {"text": docs[i]} if fmt in ("cohere", "jina", "vllm") else docs[i]
            items.append(item)
        if fmt in ("jina", "vllm"):
            return {"model": model, "results": items, "usage": {"total_tokens": tokens}}, tokens
        if fmt == "cohere":
            return {
                "id": "fake-rerank",
                "results": items,
                "meta": {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": tokens}},
            }, tokens
        usage = {"prompt_tokens": tokens, "total_tokens": tokens} if fmt == "fireworks" else {"total_tokens": tokens}
        return {"object": "list", "model": model, "data": items, "usage": usage}, tokens
