"""Each embeddings provider's names for the request options batchembed sets, in one table.

The body of an embeddings request is the same idea everywhere and differs in its field names
(``shared/reference/provider-apis.md``, the providers' API references):

| provider                  | dimension            | encoding_format              | role           | cut        |
|---------------------------|----------------------|------------------------------|----------------|------------|
| OpenAI, Fireworks, others | ``dimensions``       | ``float`` / ``base64``       | (the prefix)   | (400)      |
| Mistral                   | ``output_dimension`` | ``float`` / ``base64``       | (the prefix)   | (400)      |
| Voyage                    | ``output_dimension`` | ``base64`` or absent: floats | ``input_type`` | ``truncation`` |

Voyage cuts an over-long text silently unless told ``truncation: false``; batchembed cuts texts
itself (``limits.on_too_long``, recorded in ``_truncated.parquet``) and treats the server's "too
long" as the last word, so Voyage is always sent ``false`` (``model.extra_body`` cannot change it).
A Voyage query job (``input.role = "query"``) is sent ``input_type: "query"`` (Voyage's own query
prompt); documents are sent no ``input_type`` (the text as it is, as before) unless
``model.extra_body`` says otherwise. The online tier and the batch tier build their bodies from
:func:`embedding_options`, so both send the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Providers that name the Matryoshka size ``output_dimension`` (the others: ``dimensions``).
OUTPUT_DIMENSION = frozenset({"voyage", "mistral"})


def dimension_field(provider: str) -> str:
    """The request field that asks ``provider`` for vectors of a given size."""
    return "output_dimension" if provider in OUTPUT_DIMENSION else "dimensions"


def role_options(provider: str, role: str) -> dict[str, Any]:
    """What tells ``provider`` that the texts are queries (Voyage's ``input_type``); {} elsewhere (the
    query instruction travels in the text's prefix there)."""
    if provider == "voyage" and role == "query":
        return {"input_type": "query"}
    return {}


def embedding_options(
    provider: str,
    *,
    dimensions: int | None,
    base64: bool,
    role: str = "document",
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every field of an embeddings request but ``model`` and ``input``, in ``provider``'s names.

    ``dimensions``: the size asked of the server (None: the model's own). ``extra_body`` (the job's
    ``model.extra_body``) may set the role field (``input_type``); batchembed's dimension, encoding and
    truncation fields win over it."""
    body: dict[str, Any] = {**role_options(provider, role), **(extra_body or {})}
    if provider == "voyage":
        body["truncation"] = False
        if base64:  # Voyage knows only base64 or no encoding_format at all (floats)
            body["encoding_format"] = "base64"
    else:
        body["encoding_format"] = "base64" if base64 else "float"
    if dimensions is not None:
        body[dimension_field(provider)] = dimensions
    return body


def rerank_options(fmt: str) -> dict[str, Any]:
    """Fields a rerank request of shape ``fmt`` carries besides the query and documents (Voyage: no
    silent cut, for the reason above)."""
    return {"truncation": False} if fmt == "voyage" else {}
