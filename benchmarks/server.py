"""The benchmarks' fake embeddings server: a thin launcher of :mod:`batchembed.testing.standalone`, the
same fake provider the test suite uses (pool mode, counters on ``GET /stats``).

    python -m benchmarks.server --port 0 --dim 1024 [--rpm N --tpm N] [--pool 4096] [--style S]

See :mod:`batchembed.testing.standalone` for the options and ``/stats``.
"""

from __future__ import annotations

import sys

from batchembed.testing.answers import make_pool, pool_vectors, token_count
from batchembed.testing.standalone import main

expected_vectors = pool_vectors  # what the server returns for some texts, given its pool's vectors

__all__ = ["expected_vectors", "main", "make_pool", "token_count"]

if __name__ == "__main__":
    sys.exit(main())
