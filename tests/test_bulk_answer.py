"""The bulk base64 decoder: the same answers as the general parser, or no answer at all (pure)."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from batchembed.errors import MalformedResponse, ServerIgnoredSettings
from batchembed.providers.bulk_answer import parse_base64_answer
from batchembed.providers.openai_compat import parse_answer


def _b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


def _answer(vectors: np.ndarray, order=None, **extra) -> bytes:
    order = range(len(vectors)) if order is None else order
    data = [{"object": "embedding", "embedding": _b64(vectors[i]), "index": i} for i in order]
    return orjson.dumps({"object": "list", "data": data, **extra})


@pytest.mark.parametrize("dim", [1, 2, 3, 384, 1024, 1536])
def test_bulk_decoding_equals_the_general_parser(dim):
    vectors = np.random.default_rng(dim).standard_normal((7, dim)).astype(np.float32)
    body = _answer(vectors, model="m-1", usage={"prompt_tokens": 41, "total_tokens": 41})

    fast = parse_base64_answer(body, 7, dim)

    assert fast is not None
    assert fast[0].dtype == np.float32 and fast[0].shape == (7, dim)
    assert np.array_equal(fast[0], vectors) and fast[1:] == (41, "m-1")
    general = parse_answer(body, 7, dim)
    assert np.array_equal(general[0], vectors) and general[1:] == (41, "m-1")


def test_answers_out_of_order_are_put_in_index_order():
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    body = _answer(vectors, order=[2, 0, 3, 1], usage={"prompt_tokens": 5})

    got, tokens, model = parse_base64_answer(body, 4, None)

    assert np.array_equal(got, vectors) and tokens == 5 and model is None


def test_whitespace_and_key_order_do_not_matter():
    vectors = np.ones((2, 4), dtype=np.float32)
    items = ",\n ".join(f'{{"index": {i}, "embedding": "{_b64(vectors[i])}"}}' for i in range(2))
    body = f'{{"model": "m", "data": [ {items} ], "usage": {{"prompt_tokens": 3}}}}'.encode()

    got = parse_base64_answer(body, 2, 4)

    assert got is not None and np.array_equal(got[0], vectors) and got[1:] == (3, "m")


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":1,"embedding":[3.0,4.0]}]}',  # a float answer
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="}]}',  # one vector where two were asked for
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":0,"embedding":"AACAPwAAAEA="}]}',  # repeated
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":2,"embedding":"AACAPwAAAEA="}]}',  # out of range
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"embedding":"AACAPwAAAEA="}]}',  # no index
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":"1","embedding":"AACAPwAAAEA="}]}',  # text
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACAPw=="}]}',  # short
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACA!wAAAEA="}]}',  # not b64
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACAPwAAAEA"}]}',  # unpadded
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AADAfwAAAEA="}]}',  # NaN
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":null}]}',
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACAPwAAAEA="}],"usage":null}',
        b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACAPwAAAEA="}],"model":7}',
        b'{"data": 5}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_anything_unusual_is_left_to_the_general_parser(body):
    assert parse_base64_answer(body, 2, None) is None


def test_the_general_parser_still_says_what_is_wrong():
    repeated = b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":0,"embedding":"AACAPwAAAEA="}]}'
    with pytest.raises(MalformedResponse, match="repeated index"):
        parse_answer(repeated, 2, None)
    nan = b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AADAfwAAAEA="}]}'
    with pytest.raises(MalformedResponse, match="NaN"):
        parse_answer(nan, 2, None)
    two_dims = b'{"data":[{"index":0,"embedding":"AACAPwAAAEA="},{"index":1,"embedding":"AACAPwAAAEA="}]}'
    assert parse_base64_answer(two_dims, 2, 3) is None
    with pytest.raises(ServerIgnoredSettings):
        parse_answer(two_dims, 2, 3)
