"""The bulk decoders (base64, and float lists in one conversion): the same answers as the general parser, or no
answer at all (pure)."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from batchembed.errors import MalformedResponse, ServerIgnoredSettings
from batchembed.providers.bulk_answer import float_matrix, parse_base64_answer
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


def _float_answer(vectors: np.ndarray, order=None, **extra) -> bytes:
    order = range(len(vectors)) if order is None else order
    data = [{"object": "embedding", "embedding": vectors[i].tolist(), "index": i} for i in order]
    return orjson.dumps({"object": "list", "data": data, **extra})


@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_a_float_answer_in_one_conversion_equals_the_item_by_item_parse(order):
    vectors = np.random.default_rng(3).standard_normal((4, 384)).astype(np.float32)
    body = _float_answer(vectors, order, model="m-2", usage={"prompt_tokens": 9})

    got, tokens, model = parse_answer(body, 4, 384)

    assert got.dtype == np.float32 and np.array_equal(got, vectors) and (tokens, model) == (9, "m-2")
    items = orjson.loads(body)["data"]
    assert (float_matrix(items) is not None) == (order is None)  # out of order: item by item


@pytest.mark.parametrize(
    "items",
    [
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [3.0]}],  # ragged
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [3.0, "x"]}],  # not a number
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [[3.0], [4.0]]}],  # nested
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1.0, "embedding": [3.0, 4.0]}],  # a float index
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": True, "embedding": [3.0, 4.0]}],  # a bool index
        [{"index": 0, "embedding": [1.0, 2.0]}, {"embedding": [3.0, 4.0]}],  # no index
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": "AACAPwAAAEA="}],  # mixed
        [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}],  # empty vectors
        [{"index": 0, "embedding": [1.0, 2.0]}, [3.0, 4.0]],  # not an object
    ],
)
def test_a_float_answer_the_one_conversion_is_unsure_of_is_left_to_the_item_by_item_parse(items):
    assert float_matrix(items) is None


def test_the_item_by_item_parse_still_names_what_is_wrong_in_a_float_answer():
    ragged = b'{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":1,"embedding":[3.0]}]}'
    with pytest.raises(MalformedResponse, match="embedding 1 has 1 dimensions"):
        parse_answer(ragged, 2, None)
    nan = b'{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":1,"embedding":[1e39,2.0]}]}'  # inf as float32
    with pytest.raises(MalformedResponse, match="infinite"):
        parse_answer(nan, 2, None)
    null = b'{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":1,"embedding":[3.0,null]}]}'  # NaN, either way
    with pytest.raises(MalformedResponse, match="NaN or infinite values \\(vector 1\\)"):
        parse_answer(null, 2, None)
    two_dims = b'{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":1,"embedding":[3.0,4.0]}]}'
    with pytest.raises(ServerIgnoredSettings):
        parse_answer(two_dims, 2, 3)
