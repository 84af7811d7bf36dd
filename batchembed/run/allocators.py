"""How a run's process uses memory and threads: Arrow on jemalloc, the C heap in one arena, OpenBLAS on one
thread, and the cyclic collector kept off what setup built while the stages send (``setup_frozen``).

A run's memory is mostly short-lived blocks of about a megabyte (an answer's body, its decoded matrix,
a piece's Parquet pages), freed in another order than they came and often by another thread. Measured
on 1M rows x 1024 dims at 16 in flight (``benchmarks/README.md``), the allocators Python and pyarrow
start with keep much of that memory after it is freed: peak RSS 639-645 MB with Arrow's default pool
(mimalloc) and glibc's default arenas (up to 8 per core); 554-564 MB with Arrow on jemalloc; 491-498 MB
with jemalloc and one glibc arena, in the same time (36.0-36.3 s against 35.4-38.3 s). So ``run``
settles both before it imports pyarrow or starts a thread.

numpy's OpenBLAS is held to one thread too: a run's matrix work is a few small products per answer, and
the threads OpenBLAS starts at import spin waiting for work, on a core the run and the server share
(2% of a 100k-row run's CPU samples; six alternated pairs: see ``benchmarks/README.md``).

A user's own choice wins: ``ARROW_DEFAULT_MEMORY_POOL``, ``MALLOC_ARENA_MAX`` and ``OPENBLAS_NUM_THREADS``
(or ``OMP_NUM_THREADS``) in the environment are left as they are. Elsewhere than Linux (macOS, Windows)
neither allocator is changed; on a Linux without glibc (musl) only Arrow's pool is.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

#: glibc's ``mallopt`` parameter for the most arenas it may create (``malloc.h``: ``M_ARENA_MAX``).
M_ARENA_MAX = -8

#: One arena: measured the smallest peak at no cost in time (two: 529-530 MB).
ARENAS = 1

#: What OpenBLAS reads for its thread count, in its order: any of them set is the user's choice.
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")

#: The glibc arena cap this process set (``None``: glibc's default or the environment's).
_arenas_set: int | None = None


def settle_allocators(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put Arrow's default pool on jemalloc, cap glibc's arenas at :data:`ARENAS` and OpenBLAS at one
    thread, unless the environment already chose.

    Call it first thing in a run's process: Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` when it first
    allocates (a child process, such as a Ray worker started by this one, inherits it), and glibc keeps
    the arenas its threads already have. The arena cap is set with ``mallopt`` rather than in the
    environment, so the processes this one starts (Ray's own) keep glibc's default. Called after Arrow
    has allocated (a process that imported pyarrow first), Arrow keeps the pool it has; ``memory_report``
    says which."""
    global _arenas_set
    if not any(name in environ for name in _BLAS_THREADS):  # read when numpy is first imported
        environ["OPENBLAS_NUM_THREADS"] = "1"
    if sys.platform != "linux":  # Arrow's macOS and Windows wheels are built without jemalloc
        return
    if "ARROW_DEFAULT_MEMORY_POOL" not in environ:
        environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    capped = "MALLOC_ARENA_MAX" not in environ and _glibc() and ctypes.CDLL(None).mallopt(M_ARENA_MAX, ARENAS) == 1
    if capped:  # mallopt returns 1 on success
        _arenas_set = ARENAS


@contextlib.contextmanager
def setup_frozen() -> Iterator[None]:
    """Within the block, the objects that exist when it starts (modules, the job, the plan, the output's
    state: ~100,000 of them in a 100k-row run, living as long as the run) are out of the cyclic collector's sight.
    Sending allocates a dict per answered item, so the collector runs every few answers, and each full
    pass walked all of them again: 5.1% of a 100k-row run's CPU samples, 2.4% with them frozen. They
    are handed back to it at the end (``gc.unfreeze``), so a process that runs on (the tests, a Ray
    worker) collects them as before."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def memory_report() -> dict[str, Any]:
    """The process's peak resident memory and the allocators it used, for ``_report.json``
    (``memory``): a user sizing a machine for a job reads the first, anyone tuning memory the others."""
    import pyarrow as pa

    arenas = _arenas_set if _arenas_set is not None else os.environ.get("MALLOC_ARENA_MAX")
    return {
        "peak_rss_mb": _peak_rss_mb(),
        "arrow_pool": pa.default_memory_pool().backend_name,
        "glibc_arenas_max": int(arenas) if arenas and str(arenas).isdigit() else None,
    }


def _glibc() -> bool:
    """Whether this process's C library is glibc (the only one with ``M_ARENA_MAX``)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a GNU system
        return False


def _peak_rss_mb() -> int | None:
    """The process's peak resident set (``VmHWM``) in MB, where ``/proc`` tells it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None
